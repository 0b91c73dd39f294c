//! Env layering and version identity.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use starphleet_orders::Diagnostic;

/// Merges env layers; later layers win, the order of first appearance is kept.
pub fn merge(layers: &[&[(String, String)]]) -> Vec<(String, String)> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for layer in layers {
        for (k, v) in layer.iter() {
            match index.get(k.as_str()) {
                Some(&i) => out[i].1 = v.clone(),
                None => {
                    index.insert(k, out.len());
                    out.push((k.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// Reads the ship's env folder: every regular file, in name order, as `KEY=VALUE` lines.
pub fn read_env_dir(dir: &Path) -> (Vec<(String, String)>, Vec<Diagnostic>) {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => return (Vec::new(), Vec::new()),
    };
    names.sort();
    let mut env = Vec::new();
    let mut errors = Vec::new();
    for path in names {
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => continue,
        };
        match starphleet_orders::parse_env_file(&path, &text) {
            Ok(pairs) => env.extend(pairs),
            Err(mut d) => errors.append(&mut d),
        }
    }
    (env, errors)
}

/// The identity of a version: app commit, order revision and every env layer.
pub fn version_key(app_commit: &str, order_revision: &str, env: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(app_commit.as_bytes());
    h.update([0]);
    h.update(order_revision.as_bytes());
    for (k, v) in env {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn later_layers_win() {
        let hq = [kv("A", "hq"), kv("B", "hq")];
        let ship = [kv("B", "ship")];
        let order = [kv("A", "order"), kv("C", "order")];
        assert_eq!(
            merge(&[&hq, &ship, &order]),
            vec![kv("A", "order"), kv("B", "ship"), kv("C", "order")]
        );
    }

    #[test]
    fn version_key_changes_with_any_input() {
        let k = version_key("c", "r", &[kv("A", "1")]);
        assert_ne!(k, version_key("c2", "r", &[kv("A", "1")]));
        assert_ne!(k, version_key("c", "r2", &[kv("A", "1")]));
        assert_ne!(k, version_key("c", "r", &[kv("A", "2")]));
        assert_eq!(k, version_key("c", "r", &[kv("A", "1")]));
    }
}

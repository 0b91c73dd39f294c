//! When to order a certificate again: 30 days before it expires (sooner for short-lived
//! ones), and after a failed order with a back-off that doubles from 1 minute to 6 hours.

use serde::{Deserialize, Serialize};

/// How long before expiry a certificate is renewed.
pub const RENEW_BEFORE_S: u64 = 30 * 24 * 3600;
/// The wait after the first failed order.
pub const FIRST_RETRY_S: u64 = 60;
/// The longest wait between failed orders.
pub const MAX_RETRY_S: u64 = 6 * 3600;

/// A certificate's validity, Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    /// notBefore.
    pub not_before: u64,
    /// notAfter.
    pub not_after: u64,
}

/// Orders that failed in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// When the last one failed, Unix seconds.
    pub last_at: u64,
    /// How many failed in a row (at least 1).
    pub count: u32,
}

/// What to do about a certificate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Order it now.
    Now,
    /// Nothing until then (Unix seconds).
    At(u64),
}

/// When the certificate should be ordered next (Unix seconds): 30 days before `not_after`,
/// or two thirds into its lifetime if that is sooner (a 6-day certificate is renewed after
/// 4 days); at once (0) when there is none; never before the back-off after `failures` ends.
pub fn next_renewal_at(validity: Option<Validity>, failures: Option<Failures>) -> u64 {
    let due = validity.map_or(0, |v| {
        let lifetime = v.not_after.saturating_sub(v.not_before);
        v.not_after.saturating_sub(RENEW_BEFORE_S.min(lifetime / 3))
    });
    match failures {
        Some(f) if f.count > 0 => {
            let doublings = (f.count - 1).min(20);
            let wait = (FIRST_RETRY_S << doublings).min(MAX_RETRY_S);
            due.max(f.last_at.saturating_add(wait))
        }
        _ => due,
    }
}

/// Whether to order the certificate at `now` (Unix seconds); see [`next_renewal_at`].
pub fn renewal(now: u64, validity: Option<Validity>, failures: Option<Failures>) -> Renewal {
    let at = next_renewal_at(validity, failures);
    if now >= at {
        Renewal::Now
    } else {
        Renewal::At(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;
    const T0: u64 = 1_800_000_000;

    type Case = (
        &'static str,
        u64,
        Option<Validity>,
        Option<Failures>,
        Renewal,
    );

    #[test]
    fn renewal_table() {
        let ninety = Some(Validity {
            not_before: T0,
            not_after: T0 + 90 * DAY,
        });
        let six_days = Some(Validity {
            not_before: T0,
            not_after: T0 + 6 * DAY,
        });
        let failed = |n, at| {
            Some(Failures {
                last_at: at,
                count: n,
            })
        };
        #[rustfmt::skip]
        let cases: [Case; 14] = [
            ("no certificate: order now", T0, None, None, Renewal::Now),
            ("fresh 90-day cert waits 60 days", T0, ninety, None, Renewal::At(T0 + 60 * DAY)),
            ("one second before the window", T0 + 60 * DAY - 1, ninety, None, Renewal::At(T0 + 60 * DAY)),
            ("in the window", T0 + 60 * DAY, ninety, None, Renewal::Now),
            ("expired", T0 + 91 * DAY, ninety, None, Renewal::Now),
            ("short-lived cert renews after two thirds", T0, six_days, None, Renewal::At(T0 + 4 * DAY)),
            ("first failure waits a minute", T0, None, failed(1, T0), Renewal::At(T0 + 60)),
            ("after that minute", T0 + 60, None, failed(1, T0), Renewal::Now),
            ("second failure waits two", T0, None, failed(2, T0), Renewal::At(T0 + 120)),
            ("tenth failure is capped at 6 h", T0, None, failed(10, T0), Renewal::At(T0 + 6 * 3600)),
            ("a huge count does not overflow", T0, None, failed(u32::MAX, T0), Renewal::At(T0 + 6 * 3600)),
            ("back-off inside the window", T0 + 70 * DAY, ninety, failed(3, T0 + 70 * DAY), Renewal::At(T0 + 70 * DAY + 240)),
            ("an old failure does not delay a due renewal", T0 + 60 * DAY, ninety, failed(1, T0), Renewal::Now),
            ("a failure does not bring renewal forward", T0, ninety, failed(1, T0), Renewal::At(T0 + 60 * DAY)),
        ];
        for (what, now, validity, failures, want) in cases {
            assert_eq!(renewal(now, validity, failures), want, "{what}");
            let at = next_renewal_at(validity, failures);
            assert_eq!(
                want == Renewal::Now,
                now >= at,
                "{what}: next_renewal_at {at}"
            );
        }
    }
}

//! Entry points for cargo-fuzz (the `fuzzing` feature, off in every build but the fuzzer's):
//! the hand-written HTTP/1.1 response codec of [`crate::h1`], fed what an upstream might send.

use bytes::BytesMut;
use hyper::HeaderMap;

use crate::h1;

/// Reads `data[1..]` as an upstream's answer, delivered in pieces of `data[0] >> 1` bytes (at
/// least 1), to a `HEAD` request when `data[0]` is odd: informational heads, the final head, its
/// body to the end. Any input may be refused; none may panic, loop, or yield more body than it
/// holds.
pub fn upstream_response(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let head_request = control & 1 != 0;
    let step = usize::from(control >> 1).max(1);
    let mut pieces = input.chunks(step);
    let mut buf = BytesMut::new();
    let mut spare = HeaderMap::new();
    let head = loop {
        match h1::parse_response(&mut buf, head_request, &mut spare) {
            Ok(Some(head)) if head.status.is_informational() => continue,
            Ok(Some(head)) => break head,
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return,
            },
            Err(_) => return,
        }
    };
    let mut decoder = head.decoder;
    let mut body = 0usize;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(data)) => {
                assert!(
                    !data.is_empty(),
                    "an empty piece of body would loop forever"
                );
                body += data.len();
            }
            Ok(None) if decoder.is_done() => break,
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    let _ = decoder.eof();
                    break;
                }
            },
            Err(_) => break,
        }
    }
    assert!(
        body <= input.len(),
        "{body} body bytes out of {} in",
        input.len()
    );
}

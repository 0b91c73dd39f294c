//! Just enough HTTP/1.1 to read the response to a request forwarded without a body: the response
//! head (parsed by `httparse`, hyper's own parser) and the body's framing (RFC 9112 §6). Pure
//! functions over buffers; the socket side is in `upstream`, the request head in `forward`.
//!
//! Requests with a body, and protocol switches, go through hyper's client instead: it streams a
//! request body while already reading the answer, which this module has no need to do.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{StatusCode, Version};

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    MalformedHead(httparse::Error),
    #[error("response without a status")]
    NoStatus,
    #[error("invalid status {0}")]
    InvalidStatus(u16),
    #[error("invalid header name in response")]
    HeaderName,
    #[error("invalid value of header {0} in response")]
    HeaderValue(HeaderName),
    #[error("invalid Content-Length in response")]
    ContentLength,
    #[error("empty Content-Length in response")]
    EmptyContentLength,
    #[error("conflicting Content-Length values in response")]
    ConflictingLength,
    #[error("chunk data not followed by CRLF")]
    ChunkNotTerminated,
    #[error("malformed line in chunked body")]
    ChunkLine,
    #[error("line too long in chunked body")]
    ChunkLineTooLong,
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("upstream closed the connection before the end of the body")]
    Truncated,
}

/// The largest response head (status line and headers) accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a response head may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A response head and how its body is delimited.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Where the body ends.
    pub decoder: Decoder,
    /// Whether the connection may carry another request once this body has been read.
    pub keep_alive: bool,
}

/// Takes a complete response head off the front of `buf`, or returns `None` when more bytes
/// are needed. `head_request`: the request was `HEAD`, so the response has no body whatever
/// its headers say. `spare`: a map taken (emptied) to hold the headers once the head is
/// complete, so its allocation is reused.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    spare: &mut HeaderMap,
) -> Result<Option<Head>, Error> {
    // Header positions are noted as offsets, so the values can share the head's bytes instead of
    // being copied once the head is split off the buffer.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Error::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::MalformedHead(e)),
        };
        if len > MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            *span = (
                offset(h.name.as_bytes()),
                h.name.len() as u32,
                offset(h.value),
                h.value.len() as u32,
            );
        }
        let code = resp.code.ok_or(Error::NoStatus)?;
        (len, code, resp.version.unwrap_or(1), resp.headers.len())
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::InvalidStatus(code))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let mut headers = std::mem::take(spare);
    headers.clear();
    headers.reserve(count);
    let mut length: Option<u64> = None;
    let mut encoded = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_asked = false;
    for &(ns, nl, vs, vl) in &spans[..count] {
        let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
        let name = HeaderName::from_bytes(&head[ns..ns + nl]).map_err(|_| Error::HeaderName)?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
            .map_err(|_| Error::HeaderValue(name.clone()))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::ConflictingLength);
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            encoded = true;
            // Only a final `chunked` delimits the body; any other coding runs to the close.
            chunked = last_token(value.as_bytes()).eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_asked |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }

    let decoder = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Done
    } else if encoded {
        if chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            Decoder::Close
        }
    } else {
        match length {
            Some(0) => Decoder::Done,
            Some(n) => Decoder::Length(n),
            None => Decoder::Close,
        }
    };
    let persistent = if version == Version::HTTP_11 {
        !close
    } else {
        keep_alive_asked && !close
    };
    // A message with both Content-Length and Transfer-Encoding may be an attempt to smuggle:
    // its connection is not used again (RFC 9112 §6.3).
    let keep_alive = persistent && decoder != Decoder::Close && !(encoded && length.is_some());
    Ok(Some(Head {
        status,
        headers,
        decoder,
        keep_alive,
    }))
}

/// A Content-Length value: digits, or a list of identical ones (RFC 9110 §8.6).
fn parse_length(value: &[u8]) -> Result<u64, Error> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Error::ContentLength);
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(Error::ConflictingLength);
        }
        length = Some(n);
    }
    length.ok_or(Error::EmptyContentLength)
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Where a response body ends, and how far it has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the chunk framing.
    Chunked(Chunk),
    /// Everything until the upstream closes the connection.
    Close,
    /// The body has been read to its end (or there is none).
    Done,
}

/// A position in chunked framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) until an empty one; bytes seen so far.
    Trailers(usize),
}

impl Decoder {
    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// How many body bytes are left, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body out of `buf`. `None`: `buf` holds no more body; read more
    /// unless [`Decoder::is_done`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        loop {
            match self {
                Decoder::Done => return Ok(None),
                Decoder::Close if buf.is_empty() => return Ok(None),
                Decoder::Close => return Ok(Some(buf.split().freeze())),
                Decoder::Length(n) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (*n).min(buf.len() as u64);
                    *n -= take;
                    if *n == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Some(buf.split_to(take as usize).freeze()));
                }
                Decoder::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (*n).min(buf.len() as u64);
                    *n -= take;
                    if *n == 0 {
                        *self = Decoder::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Some(buf.split_to(take as usize).freeze()));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::ChunkNotTerminated);
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Size) => {
                    let Some(end) = line_end(buf, MAX_CHUNK_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = Decoder::Chunked(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunked(Chunk::Trailers(seen)) => {
                    let Some(end) = line_end(buf, MAX_HEAD.saturating_sub(*seen))? else {
                        return Ok(None);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *self = Decoder::Done;
                    } else {
                        *seen += end + 2;
                    }
                }
            }
        }
    }

    /// The upstream closed the connection: the end of a body delimited by the close, a
    /// truncated body otherwise.
    pub fn eof(&mut self) -> Result<(), Error> {
        match self {
            Decoder::Close | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(Error::Truncated),
        }
    }
}

/// The position of the CRLF ending the first line of `buf`, if it is there; `limit` bounds the
/// line's length. A bare LF is refused, as are CRs inside the line.
fn line_end(buf: &[u8], limit: usize) -> Result<Option<usize>, Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && buf[lf - 1] == b'\r' && !buf[..lf - 1].contains(&b'\r') => {
            Ok(Some(lf - 1))
        }
        Some(_) => Err(Error::ChunkLine),
        None if buf.len() > limit => Err(Error::ChunkLineTooLong),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, optionally followed by whitespace and `;` extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(Error::ChunkSize);
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16).unwrap_or_default();
        (n << 4) | u64::from(v)
    });
    let rest = line[digits..].trim_ascii_start();
    if rest.is_empty() || rest[0] == b';' {
        Ok(size)
    } else {
        Err(Error::ChunkSize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, head_request: bool) -> Result<Option<Head>, Error> {
        parse_response(
            &mut BytesMut::from(text),
            head_request,
            &mut HeaderMap::new(),
        )
    }

    fn head(text: &str) -> Head {
        parse(text, false).unwrap().unwrap()
    }

    /// Feeds `input` in pieces of `step` bytes, collecting the body until the decoder is done.
    fn decode_in_steps(mut decoder: Decoder, input: &[u8], step: usize) -> Result<Vec<u8>, Error> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(step);
        loop {
            while let Some(data) = decoder.decode(&mut buf)? {
                body.extend_from_slice(&data);
            }
            if decoder.is_done() {
                assert!(buf.is_empty(), "bytes after the body: {buf:?}");
                return Ok(body);
            }
            match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    decoder.eof()?;
                    return Ok(body);
                }
            }
        }
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf =
            BytesMut::from("HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        let head = parse_response(&mut buf, false, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(head.headers[header::CONTENT_LENGTH], "5");
        assert_eq!(head.decoder, Decoder::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn waits_for_a_complete_head_and_bounds_it() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(parse(&huge, false).is_err());
        assert!(parse("HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(parse("NOT HTTP\r\n\r\n", false).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let d = |text: &str| head(text).decoder;
        assert_eq!(d("HTTP/1.1 200 OK\r\n\r\n"), Decoder::Close);
        assert_eq!(
            d("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Decoder::Done
        );
        assert_eq!(d("HTTP/1.1 204 No Content\r\n\r\n"), Decoder::Done);
        assert_eq!(
            d("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Decoder::Done
        );
        assert_eq!(d("HTTP/1.1 103 Early Hints\r\n\r\n"), Decoder::Done);
        assert_eq!(
            d("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Decoder::Chunked(Chunk::Size)
        );
        assert_eq!(
            d("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Decoder::Close
        );
        let both =
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.decoder, Decoder::Chunked(Chunk::Size));
        assert!(
            !both.keep_alive,
            "a message that is both is not trusted again"
        );
        let to_head = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(to_head.decoder, Decoder::Done);
        assert!(to_head.keep_alive);
    }

    #[test]
    fn content_length_must_be_one_number() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n").decoder,
            Decoder::Length(4)
        );
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n", false).is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n", false).is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let k = |text: &str| head(text).keep_alive;
        assert!(k("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!k(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!k(
            "HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!k("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(k(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(
            !k("HTTP/1.1 200 OK\r\n\r\n"),
            "a body delimited by the close"
        );
    }

    #[test]
    fn reads_fixed_length_bodies_in_any_pieces() {
        for step in [1, 2, 5, 100] {
            let body = decode_in_steps(Decoder::Length(11), b"hello world", step).unwrap();
            assert_eq!(body, b"hello world");
        }
        assert!(
            decode_in_steps(Decoder::Length(11), b"hello", 3).is_err(),
            "truncated"
        );
        let mut extra = BytesMut::from("abcNEXT");
        let mut decoder = Decoder::Length(3);
        assert_eq!(decoder.decode(&mut extra).unwrap().unwrap(), "abc");
        assert!(decoder.is_done());
        assert_eq!(&extra[..], b"NEXT", "bytes past the body are left alone");
    }

    #[test]
    fn reads_close_delimited_bodies() {
        let body = decode_in_steps(Decoder::Close, b"until the end", 4).unwrap();
        assert_eq!(body, b"until the end");
    }

    #[test]
    fn decodes_chunks_in_any_pieces() {
        let input =
            b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA  \r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let body = decode_in_steps(Decoder::Chunked(Chunk::Size), input, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
        }
    }

    #[test]
    fn refuses_malformed_chunks() {
        let bad: [&[u8]; 7] = [
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5\rx\r\nhello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"5\r\nhel",
        ];
        for input in bad {
            let result = decode_in_steps(Decoder::Chunked(Chunk::Size), input, 3);
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
        let long = format!("{}\r\n", "0".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode_in_steps(Decoder::Chunked(Chunk::Size), long.as_bytes(), 100).is_err());
    }
}

//! Writing one response on a plain HTTP/1.1 connection: the head, then the body. A blob's
//! file bytes go out with sendfile; any other body is written frame by frame. What went
//! out is counted into the answer's served bytes, once, at the end. Framing is `Content-Length` when the length is known, chunked
//! otherwise, so a body cut short never looks complete to the client.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::mirror::{BlobReader, Piece};
use crate::server::body::{Body, Outgoing, ServedBytes, Tally};
use crate::server::guard::Guarded;

/// Small frames are gathered up to this size (with the head) into one write.
const COALESCE: usize = 64 << 10;

#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// HEAD, 204 and 304: a head and nothing after it.
    NoBody,
}

/// The socket's descriptor as sendfile calls on the blocking pool can own it; made on
/// the connection's first such call.
pub type Socket = Option<Arc<OwnedFd>>;

pub async fn write(
    io: &mut Guarded<TcpStream>,
    socket: &mut Socket,
    response: Response<Outgoing>,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let framing = framing(&parts, &body, head_only);
    let head = encode_head(&parts, framing, close);
    let served = parts.extensions.get::<ServedBytes>();
    let mut tally = Tally::new(served);
    let result = match body {
        _ if framing == Framing::NoBody => io.write_all(&head).await,
        Outgoing::Blob { reader, .. } => {
            send_pieces(io, socket, reader, head, framing, &mut tally).await
        }
        Outgoing::Body(body) => write_frames(io, body, head, framing, &mut tally).await,
    };
    tally.record(served);
    result
}

fn framing(parts: &Parts, body: &Outgoing, head_only: bool) -> Framing {
    let status = parts.status;
    if head_only || status.is_informational() || matches!(status.as_u16(), 204 | 304) {
        return Framing::NoBody;
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let exact = match body {
        Outgoing::Body(body) => body.size_hint().exact(),
        Outgoing::Blob { .. } => None,
    };
    match declared.or(exact) {
        Some(len) => Framing::Length(len),
        None => Framing::Chunked,
    }
}

fn encode_head(parts: &Parts, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let status = parts.status;
    let reason = status.canonical_reason().unwrap_or("");
    let _ = write!(head, "HTTP/1.1 {} {reason}\r\n", status.as_u16());
    for (name, value) in &parts.headers {
        if name == CONNECTION || name == TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(len) if !parts.headers.contains_key(CONTENT_LENGTH) => {
            let _ = write!(head, "content-length: {len}\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !parts.headers.contains_key(DATE) {
        let _ = write!(
            head,
            "date: {}\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        );
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A blob body from its reader: file pieces by sendfile, memory pieces by write.
async fn send_pieces(
    io: &mut Guarded<TcpStream>,
    socket: &mut Socket,
    mut reader: BlobReader,
    head: Vec<u8>,
    framing: Framing,
    tally: &mut Tally,
) -> io::Result<()> {
    io.write_all(&head).await?;
    let chunked = framing == Framing::Chunked;
    while let Some(piece) = reader.next_piece(u64::MAX).await? {
        if chunked {
            io.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
        }
        match &piece {
            Piece::Bytes(bytes) => io.write_all(bytes).await?,
            Piece::File {
                file,
                offset,
                len,
                cached,
            } => {
                io.send_file(socket, file, *offset, *len, *cached).await?;
            }
        }
        tally.add(piece.len());
        if chunked {
            io.write_all(b"\r\n").await?;
        }
    }
    finish(io, framing, tally.sent, Vec::new()).await
}

/// Any other body, frame by frame; small frames ride along with the head.
async fn write_frames(
    io: &mut Guarded<TcpStream>,
    mut body: Body,
    head: Vec<u8>,
    framing: Framing,
    tally: &mut Tally,
) -> io::Result<()> {
    let mut out = head;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(io::Error::other)?.into_data() else {
            continue; // trailers: HTTP/1.1 without TE: trailers has no place for them
        };
        if data.is_empty() {
            continue;
        }
        tally.add(data.len() as u64);
        if let Framing::Length(len) = framing {
            if tally.sent > len {
                return Err(io::Error::other("response body longer than its length"));
            }
        }
        if framing == Framing::Chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        push(io, &mut out, data).await?;
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    finish(io, framing, tally.sent, out).await
}

async fn push(io: &mut Guarded<TcpStream>, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    io.write_all(out).await?;
    out.clear();
    io.write_all(&data).await
}

/// Ends the body: a short one is an error (the connection then closes, and the client
/// sees fewer bytes than announced); a chunked one gets its last chunk.
async fn finish(
    io: &mut Guarded<TcpStream>,
    framing: Framing,
    sent: u64,
    mut out: Vec<u8>,
) -> io::Result<()> {
    match framing {
        Framing::Length(len) if sent != len => {
            return Err(io::Error::other(format!(
                "response body ended after {sent} of {len} bytes"
            )))
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    if !out.is_empty() {
        io.write_all(&out).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::body::{empty, full};
    use http::StatusCode;

    fn head_of(response: Response<Body>, head_only: bool, close: bool) -> String {
        let (parts, body) = response.map(Outgoing::Body).into_parts();
        let framing = framing(&parts, &body, head_only);
        String::from_utf8(encode_head(&parts, framing, close)).unwrap()
    }

    #[test]
    fn heads_carry_the_framing() {
        let ok = Response::builder()
            .header("x-a", "1")
            .body(full("{}"))
            .unwrap();
        let head = head_of(ok, false, true);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\ndate: "));
        assert!(head.ends_with("connection: close\r\n\r\n"));

        let declared = Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(CONTENT_LENGTH, 10)
            .body(empty())
            .unwrap();
        let head = head_of(declared, true, false);
        assert!(head.starts_with("HTTP/1.1 206 Partial Content\r\ncontent-length: 10\r\n"));
        assert_eq!(head.matches("content-length").count(), 1);
    }

    #[test]
    fn an_unknown_length_is_chunked() {
        let stream = futures_util::stream::iter([Ok(Bytes::from_static(b"ab"))]);
        let response = Response::new(crate::server::body::stream(stream));
        let head = head_of(response, false, false);
        assert!(head.contains("transfer-encoding: chunked\r\n"));
        assert!(!head.contains("content-length"));
    }
}

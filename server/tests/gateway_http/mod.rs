//! A small HTTP/1.1 client over `std::net::TcpStream` for the gateway tests: whole answers
//! (`Content-Length` or chunked, trailers skipped) and streamed ones read line by line.
#![allow(dead_code)]

pub mod diff;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn send(port: u16, method: &str, path: &str, body: &[u8]) -> Result<BufReader<TcpStream>> {
    let mut reader = send_head(port, method, path, body.len())?;
    reader.get_mut().write_all(body)?;
    Ok(reader)
}

/// Sends a request's head only, declaring a body of `length` bytes.
fn send_head(port: u16, method: &str, path: &str, length: usize) -> Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    Ok(BufReader::new(stream))
}

/// A request declaring a body of `length` bytes and sending none: the answer of a server
/// that refuses the body by its declared length.
pub fn declare_only(port: u16, path: &str, length: usize) -> Result<Answer> {
    read_answer(send_head(port, "POST", path, length)?)
}

/// Reads the status line and headers: (status, content type, chunked).
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, String, bool, Option<usize>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("status line {line:?}"))?
        .parse()?;
    if status == 100 {
        let mut blank = String::new();
        reader.read_line(&mut blank)?;
        return read_head(reader);
    }
    let (mut content_type, mut chunked, mut length) = (String::new(), false, None);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            bail!("header line {header:?}");
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_string(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => length = Some(value.parse()?),
            _ => {}
        }
    }
    Ok((status, content_type, chunked, length))
}

/// The next chunk of a chunked body; None at its end (trailers read and dropped).
fn read_chunk(reader: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>> {
    let mut size = String::new();
    if reader.read_line(&mut size)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .with_context(|| format!("chunk size {size:?}"))?;
    if size == 0 {
        loop {
            let mut trailer = String::new();
            if reader.read_line(&mut trailer)? == 0 || trailer.trim_end().is_empty() {
                return Ok(None);
            }
        }
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok(Some(chunk))
}

/// One request, its whole answer.
pub fn request(port: u16, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
    read_answer(send(port, method, path, body)?)
}

fn read_answer(mut reader: BufReader<TcpStream>) -> Result<Answer> {
    let (status, content_type, chunked, length) = read_head(&mut reader)?;
    let mut bytes = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            bytes.extend_from_slice(&chunk);
        }
    } else if let Some(length) = length {
        bytes.resize(length, 0);
        reader.read_exact(&mut bytes)?;
    } else {
        reader.read_to_end(&mut bytes)?;
    }
    Ok(Answer {
        status,
        content_type,
        body: String::from_utf8(bytes).context("answer is not UTF-8")?,
    })
}

/// A POST with a JSON body.
pub fn post(port: u16, path: &str, body: &str) -> Result<Answer> {
    request(port, "POST", path, body.as_bytes())
}

/// A streamed answer, read as it comes.
pub struct Streamed {
    pub status: u16,
    pub content_type: String,
    reader: BufReader<TcpStream>,
    chunked: bool,
    pending: Vec<u8>,
}

impl Streamed {
    /// Sends `body` to `path` and reads the answer's head (which etcd's gateway sends with the
    /// first streamed message).
    pub fn open(port: u16, path: &str, body: &str) -> Result<Streamed> {
        let mut reader = send(port, "POST", path, body.as_bytes())?;
        let (status, content_type, chunked, _) = read_head(&mut reader)?;
        Ok(Streamed {
            status,
            content_type,
            reader,
            chunked,
            pending: Vec::new(),
        })
    }

    /// The next line (without its newline), waiting at most `timeout`; None when the stream
    /// ended first. A last piece without a newline is returned as a line.
    pub fn line(&mut self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..at]).into_owned()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no line within {timeout:?}; have {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let more = if self.chunked {
                read_chunk(&mut self.reader).with_context(|| {
                    format!(
                        "reading a line within {timeout:?}; have {:?}",
                        String::from_utf8_lossy(&self.pending)
                    )
                })?
            } else {
                let mut buf = vec![0; 4096];
                let n = self.reader.read(&mut buf)?;
                buf.truncate(n);
                (n > 0).then_some(buf)
            };
            match more {
                Some(bytes) => self.pending.extend_from_slice(&bytes),
                None if self.pending.is_empty() => return Ok(None),
                None => {
                    let rest = std::mem::take(&mut self.pending);
                    return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
                }
            }
        }
    }
}

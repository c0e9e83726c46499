//! HTTP/1.1 by hand over TCP: for requests no well-behaved client sends (odd methods,
//! half-sent headers, lying lengths) and for watching what the server does with the socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response read to the end of the connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Connects to `addr` (`host:port`), with a read deadline so that a server that never
/// answers fails the test instead of hanging it.
pub fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

/// Sends `request` as given (it should say `Connection: close`) and reads the answer.
pub fn send(addr: &str, request: &[u8]) -> Answer {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send");
    read_answer(&mut stream)
}

pub fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

/// Whether the server closed `stream` (EOF or reset) within its read deadline.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

//! A log server for the log plugins' tests: a plain HTTP/1.1 server on its own threads (one per
//! connection, keep-alive honoured) that records every request it reads and answers it with a
//! set status, after a set delay or once the test releases it. Included by path (`#[path]`) from
//! the test binaries.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// One request the receiver read.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Request target.
    pub target: String,
    /// Headers, names lower-cased (the last value of a repeated one).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// What arrived, in order of arrival (recorded before the delay).
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Whether answers wait for [`Receiver::release`], and the signal that ends the wait.
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Receiver {
    /// A copy of what arrived so far.
    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Lets a receiver from [`spawn_held_receiver`] answer what waits and all that follows.
    pub fn release(&self) {
        let (held, released) = &*self.held;
        *held.lock().unwrap() = false;
        released.notify_all();
    }
}

/// Starts a receiver answering `status` after `delay`.
pub fn spawn_receiver(status: u16, delay: Duration) -> Receiver {
    start(status, delay, false)
}

/// Starts a receiver that records each request but answers none (`status`) until
/// [`Receiver::release`]: a log server that is stuck for exactly as long as a test needs.
pub fn spawn_held_receiver(status: u16) -> Receiver {
    start(status, Duration::ZERO, true)
}

fn start(status: u16, delay: Duration, held: bool) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let held = Arc::new((Mutex::new(held), Condvar::new()));
    let (sink, gate) = (Arc::clone(&received), Arc::clone(&held));
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (sink, gate) = (Arc::clone(&sink), Arc::clone(&gate));
            std::thread::spawn(move || serve(stream, &sink, &gate, status, delay));
        }
    });
    Receiver {
        url,
        received,
        held,
    }
}

fn serve(
    stream: TcpStream,
    sink: &Mutex<Vec<Received>>,
    gate: &(Mutex<bool>, Condvar),
    status: u16,
    delay: Duration,
) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sink.lock().unwrap().push(Received {
            method,
            target,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        std::thread::sleep(delay);
        let (held, released) = gate;
        drop(
            released
                .wait_while(held.lock().unwrap(), |held| *held)
                .unwrap(),
        );
        let answer = format!("HTTP/1.1 {status} Whatever\r\ncontent-length: 2\r\n\r\nok");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

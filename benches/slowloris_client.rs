//! The slow clients of `benches/slowloris.sh`: CONNS connections to 127.0.0.1:PORT, each
//! sending one byte of a request head per second on its own phase within the second and
//! reconnecting when the server answers or closes, as slowloris does. Written in Rust on one
//! thread so the attack costs the load generator's core little (a Python asyncio client spent
//! more of that core than the gateway spent on the attack). Not a criterion benchmark:
//! `cargo bench --bench slowloris_client -- PORT CONNS` runs it until it is killed.

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HEAD_START: &[u8] =
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-padding: ";

/// One slow client, forever: connect, then a byte a second until the server answers or closes.
async fn one(port: u16, phase: Duration) {
    tokio::time::sleep(phase).await;
    let head: Vec<u8> = HEAD_START
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'a', 4000))
        .collect();
    loop {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for b in &head {
            tick.tick().await;
            let mut buf = [0u8; 512];
            match s.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Answered (a 408) or closed: start again.
                _ => break,
            }
            if s.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
        }
    }
}

fn main() {
    // `cargo bench` appends `--bench`; only the two numbers are read.
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [port, conns] = args[..] else {
        eprintln!("usage: cargo bench --bench slowloris_client -- PORT CONNS");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        for i in 0..conns {
            // Phases spread evenly over the second.
            let phase = Duration::from_micros(i * 1_000_000 / conns);
            tokio::spawn(one(port as u16, phase));
        }
        std::future::pending::<()>().await
    });
}

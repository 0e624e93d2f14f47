//! `--target nats`: the same fan-out against a NATS server, through `async-nats`.
//!
//! Core NATS subjects play the rooms (`<prefix>.<room>`), each subscriber is its own
//! connection with one subscription, each publisher its own connection. Bodies and timestamps
//! are the load generator's usual ones. Core NATS has no `seq` and no acknowledgement: gaps and
//! duplicates do not apply, publishers are bounded only by `--max-lag` (end to end), and lost
//! messages show as `missing` (sent but never delivered) at the end.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::scan::{self, STAMP_DIGITS};
use crate::{Ctx, PubOut, RoomState, SubOut, BATCH, MEASURE};

pub async fn connect(addr: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .client_capacity(1 << 14)
        .read_buffer_capacity(u16::MAX)
        .connect(addr)
        .await?)
}

/// Subscribes a connection to `subject`; the subscription is on the server when this returns
/// (the SUB is written before the flush completes, and the server reads in order).
pub async fn subscribe(client: &async_nats::Client, subject: String) -> anyhow::Result<async_nats::Subscriber> {
    let sub = client.subscribe(subject).await?;
    client.flush().await?;
    Ok(sub)
}

/// Counts deliveries and records latencies until `stop`; the client is kept alive until then.
pub async fn subscriber(
    _client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    ctx: Arc<Ctx>,
    room: Arc<RoomState>,
    idx: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> SubOut {
    let mut out = SubOut::default();
    let counter = &room.received[idx];
    'outer: loop {
        let first = tokio::select! {
            m = sub.next() => m,
            _ = stop.changed() => break,
        };
        let Some(first) = first else {
            out.closed = true;
            break;
        };
        let now = ctx.clock.now();
        let measuring = ctx.phase.load(Relaxed) == MEASURE;
        let mut n = 0u64;
        let mut batch_max = 0;
        let mut one = |payload: &[u8]| {
            n += 1;
            if measuring {
                out.deliveries += 1;
                if let Some(t) = scan::stamp(payload, 0) {
                    let lat = now.saturating_sub(t).max(1);
                    let _ = out.hist.record(lat);
                    batch_max = batch_max.max(lat);
                }
            }
        };
        one(&first.payload);
        for _ in 0..4096 {
            match sub.next().now_or_never() {
                Some(Some(m)) => one(&m.payload),
                Some(None) => {
                    out.closed = true;
                    counter.fetch_add(n, Relaxed);
                    ctx.received.fetch_add(n, Relaxed);
                    break 'outer;
                }
                None => break,
            }
        }
        counter.fetch_add(n, Relaxed);
        ctx.received.fetch_add(n, Relaxed);
        ctx.max_lat.fetch_max(batch_max, Relaxed);
        room.progressed();
    }
    out
}

pub async fn publisher(
    client: async_nats::Client,
    subject: String,
    ctx: Arc<Ctx>,
    room: Arc<RoomState>,
    body_size: usize,
    rate: f64,
    max_lag: u64,
) -> anyhow::Result<PubOut> {
    let (template, stamp_at) = scan::body(body_size);
    let mut out = PubOut::default();
    let mut pacer = crate::Pacer::new(rate);
    while let Some(n) = pacer.next(BATCH, &ctx).await {
        if !crate::wait_for_lag(&ctx, &room, max_lag).await {
            break;
        }
        let now = ctx.clock.now();
        for _ in 0..n {
            let mut body = template.clone();
            scan::put_digits(&mut body[stamp_at..stamp_at + STAMP_DIGITS], now);
            client.publish(subject.clone(), Bytes::from(body)).await?;
        }
        client.flush().await?;
        pacer.sent(n);
        room.sent.fetch_add(n, Relaxed);
        ctx.sent.fetch_add(n, Relaxed);
        if ctx.phase.load(Relaxed) == MEASURE {
            out.sent += n;
        }
    }
    Ok(out)
}

/// `--nats-raw-subs`: a subscriber that speaks the NATS text protocol itself over one TCP
/// connection (CONNECT, SUB, then `MSG` lines parsed in place), as cheap per message as the
/// chat/1 subscribers. `async-nats` costs the generator about 3 times more per delivery, so
/// that with it the generator's core, not nats-server, is the limit of the fan-out.
pub async fn raw_subscribe(addr: &str, subject: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"chat-load\"}}\r\nSUB {subject} 1\r\nPING\r\n"
    );
    stream.write_all(hello.as_bytes()).await?;
    // INFO first, then PONG once the SUB is in place.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while memchr::memmem::find(&seen, b"PONG\r\n").is_none() {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            anyhow::bail!("nats-server closed the connection: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&buf[..n]);
        if memchr::memmem::find(&seen, b"-ERR").is_some() {
            anyhow::bail!("nats-server: {}", String::from_utf8_lossy(&seen));
        }
    }
    Ok(stream)
}

pub async fn raw_subscriber(
    stream: tokio::net::TcpStream,
    ctx: Arc<Ctx>,
    room: Arc<RoomState>,
    idx: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> SubOut {
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = stream.into_split();
    let mut out = SubOut::default();
    let counter = &room.received[idx];
    let mut buf = BytesMut::with_capacity(crate::CHUNK);
    loop {
        if buf.capacity() - buf.len() < crate::CHUNK / 4 {
            buf.reserve(crate::CHUNK);
        }
        let read = tokio::select! {
            r = reader.read_buf(&mut buf) => r,
            _ = stop.changed() => break,
        };
        if !matches!(read, Ok(n) if n > 0) {
            out.closed = true;
            break;
        }
        let (mut n, mut batch_max, mut pong) = (0u64, 0u64, false);
        let now = ctx.clock.now();
        let measuring = ctx.phase.load(Relaxed) == MEASURE;
        let mut pos = 0;
        while let Some(eol) = memchr::memmem::find(&buf[pos..], b"\r\n") {
            let line = &buf[pos..pos + eol];
            if let Some(args) = line.strip_prefix(b"MSG ") {
                let len = args
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<usize>().ok())
                    .unwrap_or(0);
                let start = pos + eol + 2;
                if buf.len() < start + len + 2 {
                    break;
                }
                n += 1;
                if measuring {
                    out.deliveries += 1;
                    if let Some(t) = scan::stamp(&buf[start..start + len], 0) {
                        let lat = now.saturating_sub(t).max(1);
                        let _ = out.hist.record(lat);
                        batch_max = batch_max.max(lat);
                    }
                }
                pos = start + len + 2;
            } else {
                pong |= line == b"PING";
                if line.starts_with(b"-ERR") {
                    *out.errors.entry(String::from_utf8_lossy(line).into_owned()).or_default() += 1;
                }
                pos += eol + 2;
            }
        }
        buf.advance(pos);
        counter.fetch_add(n, Relaxed);
        ctx.received.fetch_add(n, Relaxed);
        ctx.max_lat.fetch_max(batch_max, Relaxed);
        room.progressed();
        if pong && writer.write_all(b"PONG\r\n").await.is_err() {
            out.closed = true;
            break;
        }
    }
    out
}

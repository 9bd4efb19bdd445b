//! The writing half of a session: drains the bounded outbound queue into the socket, pings on
//! a timer, and closes with the right code.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use poem::web::websocket::{CloseCode, Message};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::{WsConfig, ms};
use crate::error::CloseReason;
use crate::rooms::Outbound;

/// How the session asks its writer to finish.
#[derive(Debug)]
pub struct CloseRequest {
    pub reason: CloseReason,
    pub detail: String,
}

/// Most bytes of queued frames written with one flush: a session that fell behind catches up
/// in few syscalls, without one write holding a huge buffer.
const BATCH_BYTES: usize = 64 * 1024;
/// Most frames taken from the queue at once. Frames taken no longer count against
/// `ws.outbound_queue`, so this bounds what a stuck session holds beyond it.
const BATCH_FRAMES: usize = 64;

/// Writes queued frames until asked to close, the client is too slow, or the socket fails.
/// Frames already queued when the writer wakes go out together with one flush (one `send`
/// for many frames); the slow-consumer close says the last room seq written.
pub async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Outbound>,
    mut close: oneshot::Receiver<CloseRequest>,
    slow: CancellationToken,
    cfg: WsConfig,
) where
    S: Sink<Message> + Unpin,
{
    let write_timeout = ms(cfg.write_timeout_ms);
    let mut last_seq: Option<u64> = None;
    let mut ping = interval(ms(cfg.heartbeat_ms));
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    // Registered once: a `cancelled()` made per frame would lock the token's tree each time.
    let kicked = slow.cancelled();
    tokio::pin!(kicked);
    let mut batch = Vec::new();

    let request = loop {
        tokio::select! {
            biased;
            // Frames first: while its queue holds frames a busy session polls nothing else
            // (each poll of the kick locks the token's tree). A kicked member gets no new
            // frames, so the kick is seen once the queue runs dry, or at once while a write
            // is blocked on a full socket.
            n = rx.recv_many(&mut batch, BATCH_FRAMES) => {
                if n == 0 {
                    // Every sender is gone: the session ended. It sends its close request
                    // (or drops it) right after, so wait for it rather than lose the frame.
                    break (&mut close).await.ok();
                }
                let write = write_batch(&mut sink, &mut batch, &mut last_seq);
                match write_or_kicked(write, &mut kicked, write_timeout).await {
                    Written::Done => {}
                    Written::Failed => return,
                    Written::Kicked => break None,
                    Written::TimedOut => {
                        slow.cancel();
                        break None;
                    }
                }
            }
            _ = &mut kicked => break None,
            req = &mut close => break req.ok(),
            _ = ping.tick() => {
                if timeout(write_timeout, sink.send(Message::Ping(Vec::new()))).await.is_err() {
                    slow.cancel();
                    break None;
                }
            }
        }
    };

    let slow = slow.is_cancelled().then_some(last_seq.unwrap_or(0));
    close_socket(&mut sink, &mut rx, request, slow, write_timeout).await;
}

/// How a batch's write ended.
enum Written {
    Done,
    Failed,
    Kicked,
    TimedOut,
}

/// Runs a batch's write. Most writes finish on their first poll (the socket has room): those
/// arm no timer and check no kick. One that blocks gets `write_timeout` from then on, and stops
/// when the room kicks the member.
async fn write_or_kicked<W, K>(write: W, kicked: &mut K, write_timeout: Duration) -> Written
where
    W: Future<Output = Result<(), ()>>,
    K: Future<Output = ()> + Unpin,
{
    let mut write = pin!(write);
    let first = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let done = match first {
        Poll::Ready(done) => done,
        Poll::Pending => tokio::select! {
            biased;
            _ = kicked => return Written::Kicked,
            r = timeout(write_timeout, write) => match r {
                Ok(done) => done,
                Err(_) => return Written::TimedOut,
            },
        },
    };
    match done {
        Ok(()) => Written::Done,
        Err(()) => Written::Failed,
    }
}

/// Writes the frames taken from the queue, a flush per [`BATCH_BYTES`], and empties `batch`.
/// `last_seq` follows what was flushed.
async fn write_batch<S>(
    sink: &mut S,
    batch: &mut Vec<Outbound>,
    last_seq: &mut Option<u64>,
) -> Result<(), ()>
where
    S: Sink<Message> + Unpin,
{
    let mut unflushed = 0usize;
    let mut pending_seq = None;
    for frame in batch.drain(..) {
        unflushed += frame.text.len();
        sink.feed(Message::Text(frame.text.to_string()))
            .await
            .map_err(|_| ())?;
        crate::metrics::ws_event_sent(frame.kind);
        pending_seq = frame.seq.or(pending_seq);
        if unflushed >= BATCH_BYTES {
            sink.flush().await.map_err(|_| ())?;
            *last_seq = pending_seq.or(*last_seq);
            unflushed = 0;
        }
    }
    sink.flush().await.map_err(|_| ())?;
    *last_seq = pending_seq.or(*last_seq);
    Ok(())
}

/// Sends the close frame: slow consumer (with the seq to resume from), or the session's
/// own reason after flushing what is already queued (e.g. the end of a turn).
async fn close_socket<S>(
    sink: &mut S,
    rx: &mut mpsc::Receiver<Outbound>,
    request: Option<CloseRequest>,
    slow_resume_from: Option<u64>,
    write_timeout: Duration,
) where
    S: Sink<Message> + Unpin,
{
    let (reason, detail) = if let Some(resume) = slow_resume_from {
        (
            CloseReason::SlowConsumer,
            format!("slow consumer; resume_from={resume}"),
        )
    } else if let Some(req) = request {
        if req.reason != CloseReason::FrameTooLarge {
            while let Ok(frame) = rx.try_recv() {
                let sent = timeout(
                    write_timeout,
                    sink.send(Message::Text(frame.text.to_string())),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
        (req.reason, req.detail)
    } else {
        return;
    };
    crate::metrics::ws_closed(reason.as_str());
    let msg = Message::Close(Some((CloseCode::from(reason.code()), detail)));
    let _ = timeout(write_timeout, async {
        let _ = sink.send(msg).await;
        let _ = sink.close().await;
    })
    .await;
}

//! Closing the receiving half of a one-frame stream.
//!
//! A request and its reply each travel alone on their stream, followed by the sender's FIN.
//! Reading up to that FIN lets the stream close quietly. Dropping the receiver before it
//! instead makes quinn send STOP_SENDING, which the other side acknowledges: measured at 64
//! clients, that was one extra frame in each direction for every request, and about 0.7 extra
//! datagrams sent per request on each side.
//!
//! The FIN usually rides in the same packet as the frame's last bytes, but not always: the
//! sender's connection driver may send the frame before `finish()` is called, and the FIN
//! follows in the next packet. So a FIN not yet here is waited for, off the request's path:
//! on a host while the request is served and after its reply is sent ([`end_while`], under
//! the request's admission slot), on a client by a short-lived task ([`end_after_frame`]).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use quinn::{ReadError, RecvStream, VarInt};

/// How long a stream may take to deliver its FIN once its frame is read and the work it asked
/// for is done. Past it the stream is stopped, so a peer that keeps a stream open cannot keep
/// its buffers here.
const FIN_WAIT: Duration = Duration::from_millis(200);

/// Runs `work` (serving the request that arrived on `recv`, up to its reply) while waiting for
/// `recv`'s FIN: the stream closes quietly once the FIN comes, and is stopped at once when more
/// bytes follow the frame, or when no FIN came [`FIN_WAIT`] after `work` was done. The caller
/// holds the request's admission slot across this, so the wait is counted as the request's.
pub(crate) async fn end_while<F: Future>(mut recv: RecvStream, work: F) -> F::Output {
    // Most FINs ride with their frame: one look settles those without registering a waker.
    if let Poll::Ready(finished) = look_for_fin(&mut recv) {
        settle(&mut recv, finished);
        return work.await;
    }
    let mut work = pin!(work);
    let first = {
        let mut next = pin!(recv.read_chunk(1, true));
        tokio::select! {
            // The stream first: when both are ready, a FIN that is here must be read.
            biased;
            next = &mut next => First::Stream(next.map(|chunk| chunk.is_none())),
            out = &mut work => First::Work(out),
        }
    };
    match first {
        First::Stream(finished) => {
            settle(&mut recv, finished);
            work.await
        }
        First::Work(out) => {
            wait_for_fin(recv).await;
            out
        }
    }
}

/// Which of [`end_while`]'s two waits ended first.
enum First<T> {
    /// The stream's next read: whether it found the FIN.
    Stream(Result<bool, ReadError>),
    /// The request was served before the FIN came.
    Work(T),
}

/// Ends `recv` after its one frame without delaying the caller: it closes quietly when the FIN
/// is already here, is stopped at once when more bytes followed the frame, and otherwise is
/// handed to a task that waits up to [`FIN_WAIT`] for the FIN.
pub(crate) fn end_after_frame(mut recv: RecvStream) {
    match look_for_fin(&mut recv) {
        Poll::Ready(finished) => settle(&mut recv, finished),
        Poll::Pending => {
            tokio::spawn(wait_for_fin(recv));
        }
    }
}

/// Whether the stream's next read finds its end, if that is known without waiting.
fn look_for_fin(recv: &mut RecvStream) -> Poll<Result<bool, ReadError>> {
    let mut cx = Context::from_waker(Waker::noop());
    let next = pin!(recv.read_chunk(1, true)).poll(&mut cx);
    next.map(|next| next.map(|chunk| chunk.is_none()))
}

/// Waits up to [`FIN_WAIT`] for `recv`'s FIN; stops the stream if anything else comes first.
async fn wait_for_fin(mut recv: RecvStream) {
    match tokio::time::timeout(FIN_WAIT, recv.read_chunk(1, true)).await {
        Ok(next) => settle(&mut recv, next.map(|chunk| chunk.is_none())),
        Err(_) => stop(&mut recv),
    }
}

/// `finished` says whether the stream's next read found its end.
fn settle(recv: &mut RecvStream, finished: Result<bool, ReadError>) {
    if !matches!(finished, Ok(true)) {
        stop(recv);
    }
}

fn stop(recv: &mut RecvStream) {
    let _ = recv.stop(VarInt::from_u32(0));
}

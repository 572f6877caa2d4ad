//! An I/O wrapper that fails a connection after a period with no traffic in
//! either direction.
//!
//! hyper's HTTP/1 `header_read_timeout` starts only once it knows the
//! protocol, and HTTP/2 has no idle limit at all; without this, a client
//! that completes the TLS handshake and then stays silent would hold a
//! connection slot forever. Any byte read or written resets the clock.
//! The limit must exceed the request time limit so that a request being
//! processed is never cut off.
//!
//! It wraps the TCP stream, under TLS (`server::serve`): TLS buffers what
//! it encrypts and pushes it out in its own flush, so above it a client
//! reading a large response slowly, but steadily, showed no traffic for as
//! long as that flush took.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<T> {
    inner: T,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        IdleTimeout {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.limit);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    // A flush or a shutdown that makes no headway is bounded as well: once
    // a request is in and the connection is to close, hyper only flushes
    // and shuts down, and a client that never reads would hold the
    // connection (and its buffered response) for good. (Neither touches
    // the clock: a flush with nothing to send is no traffic.)
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Takes every write, and never gets one out: a client that does not
    /// read.
    struct NeverDrains;

    impl AsyncWrite for NeverDrains {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    /// Takes at most 100 bytes a second: a client reading slowly, but
    /// reading.
    struct Trickle {
        next: Pin<Box<Sleep>>,
    }

    impl Trickle {
        fn new() -> Self {
            Trickle {
                next: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.next.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.next
                .as_mut()
                .reset(Instant::now() + Duration::from_secs(1));
            Poll::Ready(Ok(data.len().min(100)))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Takes every write into a buffer and pushes it out in its flush, as
    /// TLS does with the records it encrypts.
    struct Buffered<T> {
        inner: T,
        pending: Vec<u8>,
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.pending.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            while !this.pending.is_empty() {
                match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                    Poll::Ready(Ok(n)) => drop(this.pending.drain(..n)),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    /// 2 000 bytes at 100 a second: a 20-s flush with a 5-s limit. Under
    /// the buffering layer (where the server puts it, under TLS) every
    /// piece taken is traffic; above it (where it was) the flush failed.
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut_off_during_a_long_flush() {
        let mut io = Buffered {
            inner: IdleTimeout::new(Trickle::new(), Duration::from_secs(5)),
            pending: Vec::new(),
        };
        io.write_all(&[7; 2000]).await.unwrap();
        let started = Instant::now();
        io.flush().await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(19));

        let mut above = IdleTimeout::new(
            Buffered {
                inner: Trickle::new(),
                pending: Vec::new(),
            },
            Duration::from_secs(5),
        );
        above.write_all(&[7; 2000]).await.unwrap();
        let error = above.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_or_shutdown_that_never_ends_fails_after_the_idle_limit() {
        let mut io = IdleTimeout::new(NeverDrains, Duration::from_secs(5));
        io.write_all(b"the last response").await.unwrap();
        let started = Instant::now();
        let error = io.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
        let mut io = IdleTimeout::new(NeverDrains, Duration::from_secs(5));
        let error = io.shutdown().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}

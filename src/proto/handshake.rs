//! The handshake, both sides of it, in one round trip.
//!
//! The pool sends `Setup` at once, without waiting; the worker sends `Hello` at once. The worker
//! runs nothing named in `Setup` before it has checked that the pool runs the same image (ELF
//! build id, or the executable's inode when there is none, and the anchor symbol's offset inside
//! it); the pool checks the protocol version and the worker's identity in `Hello`, then waits for
//! `Ready` (set-up done) or the reason there is none.

use std::io::{self, Read};

use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, AsyncReader, Frame, FrameIo, Reader, Writer};
use super::{Failure, FromWorker, MAGIC, ToWorker, VERSION};
use crate::sys::image::{self, Identity};

/// Why a worker did not become ready, as the pool's side of the handshake saw it.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The link ended before the worker said hello: it died while starting.
    Vanished,
    /// The link ended after hello, during set-up (the shared object, `worker_init`).
    DiedInSetup,
    /// The worker's set-up (`worker_init`) panicked.
    InitFailed(Failure),
    /// The worker's set-up ran past its deadline.
    InitLate,
    /// The worker runs another binary or another protocol version.
    Mismatch(String),
    /// The worker sent something that is not part of the handshake.
    Protocol(String),
    /// The set-up could not be sent.
    Send(io::Error),
}

/// The pool's side: sends `setup` with `body` after it, then waits for the worker to be ready,
/// its set-up taking at most `init_timeout` from its hello. Returns how long the set-up took.
pub(crate) async fn offer<R, W>(
    rx: &mut AsyncReader<R>,
    tx: &mut W,
    setup: &ToWorker,
    body: &[u8],
    init_timeout: Option<std::time::Duration>,
) -> Result<std::time::Duration, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    frame::encode_head(&mut head, setup, body.len());
    let sent = frame::write_parts(tx, &head, body).await;
    match rx.next::<FromWorker>().await {
        Ok(Some(frame)) => check_hello(frame)?,
        Ok(None) => return Err(Refusal::Vanished),
        Err(e) => return Err(Refusal::Protocol(format!("bad hello: {e}"))),
    }
    sent.map_err(Refusal::Send)?;
    let hello = std::time::Instant::now();
    let ready = match init_timeout {
        Some(t) => tokio::time::timeout(t, rx.next::<FromWorker>())
            .await
            .map_err(|_| Refusal::InitLate)?,
        None => rx.next::<FromWorker>().await,
    };
    match ready {
        Ok(Some(frame)) => match frame.header {
            FromWorker::Ready => Ok(hello.elapsed()),
            FromWorker::InitFailed(failure) => Err(Refusal::InitFailed(*failure)),
            FromWorker::Fatal(m) => Err(Refusal::Protocol(m)),
            other => Err(Refusal::Protocol(format!("expected ready, got {other:?}"))),
        },
        Ok(None) => Err(Refusal::DiedInSetup),
        Err(e) => Err(Refusal::Protocol(e.to_string())),
    }
}

fn check_hello(frame: Frame<FromWorker>) -> Result<(), Refusal> {
    let FromWorker::Hello {
        magic,
        version,
        pid: _,
        identity,
    } = frame.header
    else {
        return Err(Refusal::Protocol(format!(
            "expected hello, got {:?}",
            frame.header
        )));
    };
    if magic != MAGIC || version != VERSION {
        return Err(Refusal::Mismatch(format!(
            "protocol {magic:#x}/{version}, expected {MAGIC:#x}/{VERSION}"
        )));
    }
    let mine = image::identity();
    if !same_image(&identity, &mine) {
        return Err(Refusal::Mismatch(format!(
            "build id {} (anchor at {:#x}), expected {} (anchor at {:#x})",
            hex(&identity.build_id),
            identity.anchor_offset,
            hex(&mine.build_id),
            mine.anchor_offset
        )));
    }
    Ok(())
}

/// Whether `theirs` names the same executable image as `mine`: the same build id (or, without
/// one, the same file) and the anchor at the same offset inside it.
fn same_image(theirs: &Identity, mine: &Identity) -> bool {
    let same_build = if mine.build_id.is_empty() {
        theirs.build_id.is_empty() && theirs.exe == mine.exe
    } else {
        theirs.build_id == mine.build_id
    };
    same_build && theirs.anchor_offset == mine.anchor_offset
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "none".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The worker's side, first step: says hello.
pub(crate) fn greet<W: FrameIo>(wr: &mut Writer<W>) -> io::Result<()> {
    let hello = FromWorker::Hello {
        magic: MAGIC,
        version: VERSION,
        pid: std::process::id(),
        identity: image::identity(),
    };
    wr.send(&hello, &[])?;
    wr.flush()
}

/// The worker's side, second step: the pool's `Setup`, once its sender is known to run this very
/// image. `Err` carries what to report as `Fatal` (or `None` when the link simply closed).
pub(crate) fn accept<R: Read>(rd: &mut Reader<R>) -> Result<Frame<ToWorker>, Option<String>> {
    match rd.next::<ToWorker>() {
        Ok(Some(frame)) => match &frame.header {
            ToWorker::Setup { identity, .. } if same_image(identity, &image::identity()) => {
                Ok(frame)
            }
            ToWorker::Setup { .. } => Err(Some("the pool runs a different binary".into())),
            other => Err(Some(format!("expected set-up, got {other:?}"))),
        },
        Ok(None) => Err(None),
        Err(e) => Err(Some(e.to_string())),
    }
}

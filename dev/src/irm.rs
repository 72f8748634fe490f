//! A blocking IRM client: connect to `<rundir>/irmd.sock`, send requests, await responses by
//! correlation id. The application library ([`crate::Client`]) talks to the IRMd through it;
//! the IRMd's tests and the tools use it directly.
//!
//! Requests may be pipelined: [`Client::send`] returns the id at once, and [`Client::wait`]
//! returns that id's response, keeping any other response that arrives first for its own
//! `wait`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use o7s_proto::irm::{
    Body, Codec, Envelope, ErrorCode, FrameDecoder, FrameError, Request, Response, ResponseKind,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The IRMd's socket could not be reached.
    #[error(
        "cannot reach the IRMd at {}: is irmd running? set O7S_RUNDIR ({source})",
        path.display()
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed (or timed out).
    #[error("irmd connection: {0}")]
    Io(#[from] io::Error),
    /// The request could not be framed, or the IRMd's bytes could not be decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The IRMd closed the connection.
    #[error("the irmd closed the connection")]
    Closed,
    /// The IRMd sent something other than a response.
    #[error("unexpected message from the irmd: {0}")]
    Unexpected(String),
    /// The IRMd refused the request.
    #[error("irmd refused: {message} ({code:?})")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The IRMd's explanation.
        message: String,
    },
}

/// A connection to the IRMd.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    early: HashMap<u64, Response>,
    inbox: VecDeque<Envelope>,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the IRMd of a run directory.
    pub fn connect(rundir: &Path) -> Result<Self, ClientError> {
        Self::connect_socket(&crate::rundir::socket_path(rundir))
    }

    /// Connects to an IRMd socket.
    pub fn connect_socket(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
            early: HashMap::new(),
            inbox: VecDeque::new(),
            buf: vec![0; 16 * 1024],
        })
    }

    /// Gives up on a read after `timeout` (`None`: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Sends a request and returns its id without waiting.
    pub fn send(&mut self, request: impl Into<Request>) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Codec::encode_to_vec(&Envelope::request(id, request))?;
        self.stream.write_all(&frame)?;
        Ok(id)
    }

    /// The next envelope the IRMd sends, whatever its id (responses already set aside by
    /// [`Client::wait`] for other ids are not returned again).
    pub fn recv(&mut self) -> Result<Envelope, ClientError> {
        loop {
            if let Some(e) = self.inbox.pop_front() {
                return Ok(e);
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                self.decoder.finish()?;
                return Err(ClientError::Closed);
            }
            // One read may hold several frames, or part of one.
            let mut input = &self.buf[..n];
            while !input.is_empty() {
                if let Some(e) = self.decoder.decode(&mut input)? {
                    self.inbox.push_back(e);
                }
            }
        }
    }

    /// Waits for the response to request `id`, setting aside responses to other requests.
    pub fn wait(&mut self, id: u64) -> Result<Response, ClientError> {
        if let Some(r) = self.early.remove(&id) {
            return Ok(r);
        }
        loop {
            let e = self.recv()?;
            match e.body {
                Some(Body::Response(r)) if e.id == id => return Ok(r),
                Some(Body::Response(r)) => {
                    self.early.insert(e.id, r);
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "envelope {} with {other:?}",
                        e.id
                    )));
                }
            }
        }
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, request: impl Into<Request>) -> Result<Response, ClientError> {
        let id = self.send(request)?;
        self.wait(id)
    }

    /// Sends a request and waits for its response, turning an error response into
    /// [`ClientError::Refused`].
    pub fn call_ok(&mut self, request: impl Into<Request>) -> Result<ResponseKind, ClientError> {
        let response = self.call(request)?;
        if let Some((code, message)) = response.as_error() {
            return Err(ClientError::Refused {
                code,
                message: message.to_owned(),
            });
        }
        response
            .kind
            .ok_or_else(|| ClientError::Unexpected("a response without a body".into()))
    }

    /// The socket, for tests that misbehave on purpose.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

//! Errors of the transport layer.

/// What can go wrong while framing, securing or moving bytes.
#[derive(thiserror::Error, Debug)]
pub enum TransportError {
    /// A frame announced more bytes than allowed; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The payload did not decode as the expected message.
    #[error("malformed message: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(String),
    /// An I/O error on a stream.
    #[error("stream error: {0}")]
    Io(String),
    /// TLS material could not be loaded or is unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The peer's certificate does not carry a shardkv identity we accept.
    #[error("peer identity: {0}")]
    Identity(String),
    /// Connecting to a peer failed; the reason comes from QUIC/TLS.
    #[error("connection to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    /// The peer refused us: our certificate is not from its CA, or our role may not do what we
    /// tried. Retrying will not help; fix the certificate or the configuration.
    #[error("refused by {addr}: {reason}")]
    Refused { addr: String, reason: String },
    /// The endpoint could not be created (e.g. address in use).
    #[error("endpoint on {addr}: {reason}")]
    Endpoint { addr: String, reason: String },
}

impl TransportError {
    /// Wraps an I/O error, keeping its message.
    pub fn io(e: impl std::fmt::Display) -> Self {
        TransportError::Io(e.to_string())
    }
}

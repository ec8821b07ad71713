//! framegate's wire protocol: the FlatBuffers schema, a safe encode/decode API
//! and length-prefixed framing. No I/O lives here.

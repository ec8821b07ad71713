//! Web pages served by the gateway itself. `console` is the customer console
//! at `/console/` (sources in `console/`, built assets embedded at compile
//! time by `server/build.rs`).

pub mod console;

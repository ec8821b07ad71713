//! framegate, the gateway.

//! The chat page a browser gets at `/` of `serve --app chat --ws ADDR`:
//! HTML and JavaScript, no build step, shipped in the binary. It speaks
//! the chat protocol ([`super::protocol`]) over a WebSocket to the same
//! port, one or more packets per binary message.

/// The page.
pub const HTML: &str = include_str!("page.html");

//! The two bodies that cross corral, both streamed frame by frame.
//!
//! [`RequestBody`](request::RequestBody) carries a client's request body upstream and enforces the
//! listener's limits on it (size, pause between reads) without buffering.
//! [`ResponseBody`](response::ResponseBody) carries an upstream's response (or a short local answer)
//! back to the client. When it is dropped, the request is over: the upstream
//! lease is released (the server's in-flight count drops and an HTTP/1.1
//! connection that finished cleanly goes back to its pool) and the request is
//! counted and logged.

pub mod request;
pub mod response;

//! Serving: the registry API, hostile and malformed requests, limits, the plain
//! HTTP/1.1 path, h2 flow control, systemd.

mod api;
mod h2_stall;
mod hostile;
mod limits;
mod plain_http;
mod systemd;

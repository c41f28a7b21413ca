//! One request/response exchange on a client connection: the parsed head, the connection, and
//! whether the connection stays open after the response.

use super::h1::{ClientConn, RequestHead};

/// A request being answered.
pub(super) struct Exchange<'a> {
    pub conn: &'a mut ClientConn,
    pub head: &'a RequestHead,
    /// The connection serves another request after this one.
    pub keepalive: bool,
    /// The gateway's stop: a response written while it drains closes its connection, however
    /// long ago the request came.
    pub drain: &'a crate::shutdown::Drain,
    /// The data plane's settings for this request.
    pub settings: &'a super::settings::Settings,
}

impl Exchange<'_> {
    /// Start a response head in the output buffer: the status line, `Date` and, when the
    /// connection closes (or an HTTP/1.0 client keeps it), `Connection`.
    pub fn start_head(&mut self, status: u16, reason: Option<&[u8]>) {
        let out = &mut self.conn.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        let canonical = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("")
            .as_bytes();
        out.extend_from_slice(reason.unwrap_or(canonical));
        out.extend_from_slice(b"\r\n");
    }

    /// The `Connection` field (when needed) and the blank line that ends the head.
    pub fn end_head(&mut self) {
        if self.keepalive && self.drain.draining() {
            self.keepalive = false;
        }
        let out = &mut self.conn.out;
        if !self.keepalive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if !self.head.http11 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Add a header field to the head being written.
    pub fn field(&mut self, name: &str, value: &[u8]) {
        let out = &mut self.conn.out;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    /// A complete response of the gateway's own: status, JSON body, extra fields. A HEAD request
    /// gets the head only. `false` when the client could not be written to.
    pub async fn respond_json(
        &mut self,
        status: u16,
        fields: &[(&str, &[u8])],
        body: &[u8],
    ) -> bool {
        self.respond(status, Some(b"application/json"), fields, body)
            .await
    }

    /// A complete response of the gateway's own, with a body of `content_type` (none when the
    /// body is empty and says nothing).
    pub async fn respond(
        &mut self,
        status: u16,
        content_type: Option<&[u8]>,
        fields: &[(&str, &[u8])],
        body: &[u8],
    ) -> bool {
        self.start_head(status, None);
        if let Some(content_type) = content_type {
            self.field("content-type", content_type);
        }
        self.field(
            "content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
        self.field(
            "date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        for (name, value) in fields {
            self.field(name, value);
        }
        self.end_head();
        if !self.head.is_head() {
            self.conn.out.extend_from_slice(body);
        }
        let ok = self.conn.send(&[]).await.is_ok();
        if !ok {
            self.keepalive = false;
        }
        ok
    }

    /// Before answering without reading the body: drop it when it is already buffered, else
    /// close the connection after the response (its body bytes would be read as a request).
    pub fn settle_unread_body(&mut self) {
        if self.conn.body_pending(self.head) {
            self.keepalive = false;
        } else {
            self.conn.skip_buffered_body(self.head);
        }
    }
}

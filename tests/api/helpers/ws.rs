//! A WebSocket client of a session's socket, and opening one as a member.

use super::*;

/// A WebSocket client of a session.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What a socket yielded.
#[derive(Debug)]
pub enum WsItem {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    /// Sends a text message.
    pub async fn send_text(&mut self, text: String) {
        use futures::SinkExt as _;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends any message, raw frames included (a client breaking the rules).
    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures::SinkExt as _;
        self.stream.send(message).await.expect("send");
    }

    /// Sends a JSON message and waits for the `reply` to `request_id`,
    /// skipping events in between.
    pub async fn request(&mut self, message: Value, wait: Duration) -> Value {
        let request_id = message["request_id"].clone();
        self.send_text(message.to_string()).await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(WsItem::Json(value))
                    if value["type"] == "reply" && value["request_id"] == request_id =>
                {
                    return value;
                }
                Some(WsItem::Json(_)) => continue,
                other => panic!("no reply to {request_id}: {other:?}"),
            }
        }
    }

    /// The next JSON message or the close, waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<WsItem> {
        use futures::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(WsItem::Json(
                        serde_json::from_str(&text).expect("json message"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(WsItem::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(WsItem::Closed(None)),
            }
        }
    }

    /// Collects messages until `done` holds for the list, failing after `wait`.
    pub async fn collect_until(
        &mut self,
        wait: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(WsItem::Json(value)) => seen.push(value),
                other => panic!("socket ended early ({other:?}) after {seen:#?}"),
            }
        }
        seen
    }
}

impl TestApp {
    /// Opens `/ws/sessions/{session}` as `user`; `Err(status)` if refused.
    pub async fn ws(
        &self,
        user: &str,
        session: &str,
        after_seq: Option<i64>,
    ) -> Result<WsClient, u16> {
        self.ws_with_token(&self.token(user), session, after_seq)
            .await
    }

    /// Opens `/ws/sessions/{session}` with `token`; `Err(status)` if refused.
    pub async fn ws_with_token(
        &self,
        token: &str,
        session: &str,
        after_seq: Option<i64>,
    ) -> Result<WsClient, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let query = after_seq
            .map(|s| format!("?after_seq={s}"))
            .unwrap_or_default();
        let mut request = format!("ws://{}/ws/sessions/{session}{query}", self.addr)
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        self.ws_request(request).await
    }

    /// Opens a socket with a prepared request.
    pub async fn ws_request(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, u16> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, response)) => {
                assert_eq!(response.status().as_u16(), 101);
                Ok(WsClient { stream })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("websocket connect failed: {other}"),
        }
    }

    /// The session's durable events over REST.
    pub async fn events(&self, user: &str, session: &str, after_seq: i64) -> Vec<Value> {
        let resp = self
            .get(
                user,
                &format!("/api/sessions/{session}/events?after_seq={after_seq}&limit=1000"),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.body["events"].as_array().expect("events").clone()
    }
}

//! What gateway nodes tell each other: heartbeats (who is alive, and since when), messages for
//! one node (lifecycle commands sent to the node that runs a model), and the replies to them.
//! The embedded store keeps them in memory (one instance: every message is for itself); the
//! Valkey store carries them between instances (see `valkey/nodes.rs`).

use super::StoreError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// A reply nobody took is dropped after this long.
pub const REPLY_TTL: Duration = Duration::from_secs(300);
/// Messages a slow receiver may fall behind by before it loses some.
const INBOX_DEPTH: usize = 1024;

/// A message for one node.
#[derive(Debug, Clone)]
pub struct NodeMessage {
    /// The node it is for.
    pub node: String,
    pub body: Vec<u8>,
}

/// Heartbeats, messages and replies in memory.
pub struct MemoryNodes {
    beats: Mutex<HashMap<String, Vec<u8>>>,
    replies: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
    inbox: broadcast::Sender<NodeMessage>,
}

impl Default for MemoryNodes {
    fn default() -> Self {
        Self {
            beats: Mutex::default(),
            replies: Mutex::default(),
            inbox: broadcast::channel(INBOX_DEPTH).0,
        }
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Invalid("node table poisoned".into())
}

impl MemoryNodes {
    pub fn beat(&self, node: &str, info: &[u8]) -> Result<(), StoreError> {
        self.beats
            .lock()
            .map_err(poisoned)?
            .insert(node.to_string(), info.to_vec());
        Ok(())
    }

    pub fn beats(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let beats = self.beats.lock().map_err(poisoned)?;
        Ok(beats.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Deliver a message to this process's receivers (nobody listening is not an error: the
    /// sender finds out when no reply comes).
    pub fn deliver(&self, node: &str, body: &[u8]) {
        let _ = self.inbox.send(NodeMessage {
            node: node.to_string(),
            body: body.to_vec(),
        });
    }

    pub fn inbox(&self) -> broadcast::Receiver<NodeMessage> {
        self.inbox.subscribe()
    }

    pub fn reply_put(&self, id: &str, body: &[u8]) -> Result<(), StoreError> {
        let mut replies = self.replies.lock().map_err(poisoned)?;
        let now = Instant::now();
        replies.retain(|_, (at, _)| now.duration_since(*at) < REPLY_TTL);
        replies.insert(id.to_string(), (now, body.to_vec()));
        Ok(())
    }

    pub fn reply_take(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .replies
            .lock()
            .map_err(poisoned)?
            .remove(id)
            .map(|(_, body)| body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_reach_every_receiver_and_a_reply_is_taken_once() {
        let nodes = MemoryNodes::default();
        let mut rx = nodes.inbox();
        nodes.deliver("a", b"start m1");
        let got = rx.recv().await.unwrap();
        assert_eq!(
            (got.node.as_str(), got.body.as_slice()),
            ("a", &b"start m1"[..])
        );

        nodes.reply_put("r1", b"ok").unwrap();
        assert_eq!(nodes.reply_take("r1").unwrap().as_deref(), Some(&b"ok"[..]));
        assert_eq!(nodes.reply_take("r1").unwrap(), None);

        nodes.beat("a", b"1").unwrap();
        nodes.beat("a", b"2").unwrap();
        assert_eq!(
            nodes.beats().unwrap(),
            vec![("a".to_string(), b"2".to_vec())]
        );
    }
}

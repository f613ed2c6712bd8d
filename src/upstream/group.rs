//! Group commit: entity writes that arrive at one sidecar while another is being committed
//! upstream share the next transaction, and so one revision.
//!
//! Every upstream write holds the counter row's lock from its first statement to its commit
//! (that is what makes revisions dense and ordered), so writes go one at a time and a write
//! costs the round trips and the commit's flush. Committing together what queued up meanwhile
//! divides that cost by the queue's length; an idle sidecar still commits a lone write at once.
//!
//! The writes of a group are applied in arrival order (an entity written twice keeps the later
//! body), as if committed one after another with nothing in between, and each caller gets the
//! group's revision. A write is still all or nothing on its own: when the group fails for a
//! reason one write can cause (a parent cycle, a statement refused), the group is committed
//! again with each write behind a savepoint of its own, so only the guilty ones fail. Commits run in spawned tasks, so a
//! caller that goes away (a client hung up) never cancels the others' commit.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::write::Committed;
use super::{Upstream, UpstreamError};
use crate::store::Record;

/// Most entities committed in one group (a single write larger than this goes alone).
const MAX_ENTITIES: usize = 10_000;

type Reply = oneshot::Sender<Result<Committed, UpstreamError>>;

/// A write waiting for its group.
struct Pending {
    records: Vec<Record>,
    reply: Reply,
}

/// The queue of writes and the turn to commit them.
#[derive(Default)]
pub struct Group {
    pending: Mutex<Vec<Pending>>,
    /// Held by the caller committing a group; the others queue meanwhile.
    turn: tokio::sync::Mutex<()>,
}

impl Group {
    /// Commits `records` upstream as one write, in a group with whatever else is waiting.
    pub async fn upsert(
        &self,
        upstream: &Upstream,
        records: Vec<Record>,
    ) -> Result<Committed, UpstreamError> {
        let (reply, mut answer) = oneshot::channel();
        self.queue().push(Pending { records, reply });
        let turn = self.turn.lock().await;
        // A group committed while this caller waited for its turn may have taken this write.
        match answer.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => return Err(abandoned()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let group = self.take();
        if !group.is_empty() {
            let upstream = upstream.clone();
            // Awaited under the turn, so groups commit one after another; spawned, so it runs
            // to the end even if this caller is dropped.
            let _ = tokio::spawn(commit(upstream, group)).await;
        }
        drop(turn);
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest waiting writes, up to [`MAX_ENTITIES`] entities (at least one write).
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue();
        let mut entities = 0;
        let mut n = 0;
        for p in queue.iter() {
            if n > 0 && entities + p.records.len() > MAX_ENTITIES {
                break;
            }
            entities += p.records.len();
            n += 1;
        }
        queue.drain(..n).collect()
    }
}

/// Commits a group and answers each of its writes.
async fn commit(upstream: Upstream, group: Vec<Pending>) {
    if group.len() == 1 {
        for p in group {
            let _ = p.reply.send(upstream.upsert(&p.records).await);
        }
        return;
    }
    match upstream.upsert(&merge(&group)).await {
        Ok(committed) => {
            for p in group {
                let _ = p.reply.send(Ok(committed.clone()));
            }
        }
        // One write may be the cause: again, each write behind a savepoint of its own, so
        // only the guilty ones fail.
        Err(e) if e.one_write_may_cause() => {
            let writes: Vec<&[Record]> = group.iter().map(|p| p.records.as_slice()).collect();
            match upstream.upsert_each(&writes).await {
                Ok((committed, outcomes)) => {
                    for (p, outcome) in group.into_iter().zip(outcomes) {
                        let answer = outcome.and_then(|()| committed.clone().ok_or_else(abandoned));
                        let _ = p.reply.send(answer);
                    }
                }
                Err(e) => answer_all(group, &e),
            }
        }
        Err(e) => answer_all(group, &e),
    }
}

/// Answers every write of a group that failed as a whole.
fn answer_all(group: Vec<Pending>, e: &UpstreamError) {
    let message = e.to_string();
    for p in group {
        let _ = p
            .reply
            .send(Err(UpstreamError::Unavailable(message.clone())));
    }
}

/// The group's entities in arrival order, each once, as its last write left it.
fn merge(group: &[Pending]) -> Vec<Record> {
    let mut at: HashMap<&cedar_policy::EntityUid, usize> = HashMap::new();
    let mut out: Vec<Record> = Vec::new();
    for record in group.iter().flat_map(|p| &p.records) {
        match at.get(&record.uid) {
            Some(&i) => out[i] = record.clone(),
            None => {
                at.insert(&record.uid, out.len());
                out.push(record.clone());
            }
        }
    }
    out
}

fn abandoned() -> UpstreamError {
    UpstreamError::Unavailable("the write's commit task ended without an answer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, body: &str) -> Record {
        let uid: cedar_policy::EntityUid = format!("User::\"{id}\"").parse().unwrap();
        Record::from_stored(
            uid,
            format!(
                r#"{{"uid":{{"type":"User","id":"{id}"}},"attrs":{{"n":"{body}"}},"parents":[]}}"#
            ),
        )
        .unwrap()
    }

    #[test]
    fn a_merged_group_keeps_arrival_order_and_the_last_body() {
        let pending = |records: Vec<Record>| Pending {
            records,
            reply: oneshot::channel().0,
        };
        let group = vec![
            pending(vec![record("a", "1"), record("b", "1")]),
            pending(vec![record("c", "1"), record("a", "2")]),
        ];
        let merged = merge(&group);
        let ids: Vec<String> = merged
            .iter()
            .map(|r| r.uid.id().unescaped().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(merged[0].body.contains(r#""n":"2""#), "{}", merged[0].body);
    }
}

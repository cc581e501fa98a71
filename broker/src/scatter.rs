//! Scatter/gather by owner shard: the one way a request that touches many partitions or
//! groups reaches their owners. Items are grouped by owner, each owner gets one message with
//! all of its items (never one hop per item), and the answers come back in the items' order.
//!
//! `work` runs on the owner and must answer every item it is given, in order; an owner that
//! cannot be reached (shutting down) answers every one of its items with `ShardUnavailable`.

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;

use futures::future::join_all;

use crate::shard::{Shard, ShardUnavailable};

/// Runs `work` once per owner shard with that owner's items; returns one answer per item of
/// `routed` (`(owner, item)` pairs), in the same order.
pub async fn scatter<I, A, F, Fut>(
    shard: &Rc<Shard>,
    routed: Vec<(usize, I)>,
    work: F,
) -> Vec<Result<A, ShardUnavailable>>
where
    I: Send + 'static,
    A: Send + 'static,
    F: Fn(Rc<Shard>, Vec<I>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = Vec<A>> + 'static,
{
    let count = routed.len();
    let mut by_owner: BTreeMap<usize, (Vec<usize>, Vec<I>)> = BTreeMap::new();
    for (index, (owner, item)) in routed.into_iter().enumerate() {
        let entry = by_owner.entry(owner).or_default();
        entry.0.push(index);
        entry.1.push(item);
    }
    let calls = by_owner.into_iter().map(|(owner, (indexes, items))| {
        let work = work.clone();
        let call = shard.invoke_on(owner, move |shard| work(shard, items));
        async move { (owner, indexes, call.await) }
    });
    let mut answers: Vec<Option<Result<A, ShardUnavailable>>> = (0..count).map(|_| None).collect();
    for (owner, indexes, outcome) in join_all(calls).await {
        match outcome {
            Ok(results) => {
                assert_eq!(
                    results.len(),
                    indexes.len(),
                    "an owner must answer every item"
                );
                for (index, result) in indexes.into_iter().zip(results) {
                    answers[index] = Some(Ok(result));
                }
            }
            Err(_) => {
                for index in indexes {
                    answers[index] = Some(Err(ShardUnavailable(owner)));
                }
            }
        }
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(index, answer)| answer.unwrap_or_else(|| unreachable!("item {index} was routed")))
        .collect()
}

/// Runs `work` on every shard of this broker at once; one answer per shard, by shard id.
pub async fn broadcast<A, F, Fut>(shard: &Rc<Shard>, work: F) -> Vec<Result<A, ShardUnavailable>>
where
    A: Send + 'static,
    F: Fn(Rc<Shard>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = A> + 'static,
{
    join_all((0..shard.count).map(|target| shard.invoke_on(target, work.clone()))).await
}

//! A worker that breaks the wire protocol is killed and replaced; the pool never panics.
mod common;
use common::*;

/// A frame whose header is not a valid message.
fn send_garbage(x: u64) -> u64 {
    let mut frame = Vec::new();
    frame.extend_from_slice(&12u32.to_le_bytes()); // frame length
    frame.extend_from_slice(&8u32.to_le_bytes()); // header length
    frame.extend_from_slice(&[0xff; 8]); // not a postcard `FromWorker`
    assert!(ampire::__inject_raw_result_bytes(&frame));
    x
}

/// A frame that claims to be 3 GiB long.
fn send_oversized(x: u64) -> u64 {
    assert!(ampire::__inject_raw_result_bytes(
        &(3u32 << 30).to_le_bytes()
    ));
    x
}

fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

fn big_result(n: usize) -> Vec<u8> {
    vec![7; n]
}

/// A result that serialises in the worker but refuses to deserialise in the pool when odd.
#[derive(Debug, PartialEq)]
struct EvenOnly(u64);

impl serde::Serialize for EvenOnly {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EvenOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = <u64 as serde::Deserialize>::deserialize(d)?;
        if v % 2 == 1 {
            return Err(serde::de::Error::custom(format!("{v} is odd")));
        }
        Ok(EvenOnly(v))
    }
}

fn even_only(x: u64) -> EvenOnly {
    EvenOnly(x)
}

/// Sends events to the pool from the middle of a chunk.
fn chatty(x: u64) -> u64 {
    if x % 10 == 3 {
        assert!(ampire::__send_events());
    }
    x
}

each_method! {
    processes async fn events_may_come_at_any_time(m: StartMethod) {
        let pool = pool(m, 2).await;
        let pids = pool.worker_pids();
        assert_eq!(pool.map(chatty, 0..1000u64).chunk_size(50).await.unwrap(), (0..1000).collect::<Vec<_>>());
        assert_eq!(pool.apply(chatty, 3).await.unwrap(), 3);
        assert_eq!(pool.worker_pids(), pids, "no worker was replaced");
        pool.shutdown().await.unwrap();
    }

    processes async fn a_result_that_does_not_deserialise_fails_its_chunk_only(m: StartMethod) {
        use futures_util::StreamExt;
        let pool = pool(m, 2).await;
        let e = pool.apply(even_only, 3).await.unwrap_err();
        assert!(e.is_codec(), "{e}");
        // (postcard keeps no custom message, only that deserialisation failed.)
        assert!(e.to_string().contains("could not deserialise a result"), "{e}");
        assert!(e.worker_id().is_some_and(|w| w < 2), "{e}");
        // In a stream, each chunk of one task stands alone: odd ones fail, even ones arrive.
        let got: Vec<Result<EvenOnly, Error>> =
            pool.map_stream(even_only, futures_util::stream::iter(0..10u64)).chunk_size(1).collect().await;
        for (i, r) in got.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!((i % 2, v.0), (0, i as u64)),
                Err(e) => assert!(i % 2 == 1 && e.is_codec() && e.task_index() == Some(i), "{i}: {e}"),
            }
        }
        // No worker was harmed: the same pool goes on.
        assert_eq!(pool.apply(even_only, 4).await.unwrap(), EvenOnly(4));
        pool.shutdown().await.unwrap();
    }


    processes async fn a_garbage_frame_kills_and_replaces_the_worker(m: StartMethod) {
        let pool = pool(m, 2).await;
        let e = pool.apply(send_garbage, 1).await.unwrap_err();
        assert!(e.is_protocol(), "{e}");
        assert!(e.to_string().contains("malformed frame header"), "{e}");
        assert_eq!(pool.map(std::convert::identity::<u64>, 0..100u64).await.unwrap().len(), 100);
        pool.shutdown().await.unwrap();
    }

    processes async fn an_oversized_frame_kills_and_replaces_the_worker(m: StartMethod) {
        let pool = pool(m, 2).await;
        let e = pool.apply(send_oversized, 1).await.unwrap_err();
        assert!(e.is_protocol() && e.to_string().contains("exceeds the limit"), "{e}");
        assert_eq!(pool.apply(std::convert::identity::<u64>, 5).await.unwrap(), 5);
        pool.shutdown().await.unwrap();
    }

    async fn a_result_over_max_frame_len_fails_alone(m: StartMethod) {
        use futures_util::StreamExt;
        let pool = AsyncPool::builder().workers(1).start_method(m).max_frame_len(64 * 1024).build().await.unwrap();
        let pids = pool.worker_pids();
        let sizes = vec![1000, 2000, 1 << 20, 10, 30_000, 30_000, 30_000];
        let out: Vec<Result<Vec<u8>, Error>> = pool.map_stream(big_result, futures_util::stream::iter(sizes.clone())).collect().await;
        for (i, r) in out.into_iter().enumerate() {
            match (i, m.is_process()) {
                (2, true) => {
                    let e = r.unwrap_err();
                    assert!(e.is_codec() && e.task_index() == Some(2), "{e}");
                    assert!(e.to_string().contains("more than max_frame_len"), "{e}");
                    assert_eq!(e.input(), Some("1048576"), "{e}");
                }
                _ => assert_eq!(r.unwrap().len(), sizes[i], "task {i}"),
            }
        }
        // The worker was not harmed: the same process serves on.
        assert_eq!(pool.worker_pids(), pids);
        assert_eq!(pool.apply(big_result, 10).await.unwrap().len(), 10);
        pool.shutdown().await.unwrap();
    }

    async fn an_input_over_max_frame_len_fails_alone(m: StartMethod) {
        use futures_util::StreamExt;
        let pool = AsyncPool::builder().workers(2).start_method(m).max_frame_len(64 * 1024).build().await.unwrap();
        let inputs = (0..10usize).map(|i| vec![i as u8; if i == 4 { 1 << 20 } else { 1000 }]);
        let out: Vec<Result<usize, Error>> = pool.map_stream(byte_len, futures_util::stream::iter(inputs)).collect().await;
        for (i, r) in out.into_iter().enumerate() {
            match (i, m.is_process()) {
                (4, true) => {
                    let e = r.unwrap_err();
                    assert!(e.is_codec() && e.task_index() == Some(4), "{e}");
                    assert!(e.to_string().contains("more than max_frame_len"), "{e}");
                    assert!(e.input().is_some_and(|d| d.starts_with("[4, 4, 4")), "{e}");
                }
                // Threads move inputs: nothing is framed.
                (4, false) => assert_eq!(r.unwrap(), 1 << 20),
                _ => assert_eq!(r.unwrap(), 1000),
            }
        }
        pool.shutdown().await.unwrap();
    }
}

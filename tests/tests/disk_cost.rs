//! Disk cost per partition: a partition holding little costs little disk. Segment files are
//! preallocated ahead of their end by as much as they hold (64 KiB at least, 64 MiB at most),
//! so ten thousand quiet partitions fit a small disk.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tern_tests::kafka::{self, Rec};
use tern_tests::Broker;

/// Bytes the filesystem allocated for every file under `dir` (st_blocks, 512-byte units).
fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            allocated_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

#[test]
fn quiet_partitions_cost_about_a_hundred_kibibytes_each_on_disk() {
    const PARTITIONS: i32 = 300;
    let broker = Broker::start(1);
    let before = allocated_bytes(broker.data_dir());
    let topic = "many-quiet";
    kafka::create_topic(&broker, topic, PARTITIONS, &[]);
    let producer = kafka::producer_with(&broker, &[("linger.ms", "0")]);
    for partition in 0..PARTITIONS {
        let records: Vec<Rec> = (0..10).map(|i| Rec::value(vec![i as u8; 1024])).collect();
        kafka::produce(&producer, topic, Some(partition), &records);
    }
    let per_partition = (allocated_bytes(broker.data_dir()) - before) / PARTITIONS as u64;
    println!("{PARTITIONS} partitions of 10 x 1 KiB records: {per_partition} bytes of disk each");
    assert!(
        per_partition <= 200 * 1024,
        "{per_partition} bytes allocated per quiet partition"
    );
    // Every record is still there.
    let (low, high) = kafka::watermarks(&broker, topic, PARTITIONS - 1);
    assert_eq!((low, high), (0, 10));
}

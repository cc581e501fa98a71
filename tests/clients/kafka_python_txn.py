"""Transactions through kafka-python (a second client, besides librdkafka).

Usage: kafka_python_txn.py BOOTSTRAP TOPIC

Commits five records, aborts five (sent before the abort), commits one more, then reads the
topic back with a read_committed and a read_uncommitted consumer and prints what each saw,
one line per consumer: `committed: v,v,...` and `uncommitted: v,v,...`.
"""
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def read_all(bootstrap, topic, isolation):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values = [message.value.decode() for message in consumer]
    consumer.close()
    return values


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="kafka-python-txn")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, f"kp-commit-{i}".encode(), partition=0)
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, f"kp-abort-{i}".encode(), partition=0)
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"kp-last", partition=0)
    producer.commit_transaction()
    producer.close()
    print("committed: " + ",".join(read_all(bootstrap, topic, "read_committed")))
    print("uncommitted: " + ",".join(read_all(bootstrap, topic, "read_uncommitted")))


if __name__ == "__main__":
    main()

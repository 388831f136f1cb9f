//! A broker restart: the private tansu broker (its data in a file) is killed with
//! SIGKILL while the relay publishes and the consumer group consumes, and started again
//! on the same data; every event is applied once, in order per stream, none lost.
//! (In a binary of its own, like RabbitMQ's, so that a broken broker cannot disturb the
//! other tests.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::ledger::{
    Ledger, TurnInbox, append_round, assert_exactly_once, streams, total, wait_until,
};
use common::{PrivateKafka, Storage};
use cqrs_core::{Consumer, InMemoryEventStore, Relay, RelayConfig, SubjectScheme};
use cqrs_kafka::{GroupSettings, KafkaPublisher, KafkaSubscription};
use tokio::sync::oneshot;

const TOPIC: &str = "bank-events";
const STREAMS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_applied_twice_across_a_broker_restart() {
    let Some(mut broker) = PrivateKafka::start(Storage::File) else {
        return;
    };
    let publisher = KafkaPublisher::connect(&broker.url(), TOPIC).expect("a publisher");
    publisher.ensure_topic(3).await.expect("creating the topic");
    let store = InMemoryEventStore::new();
    let streams = streams(STREAMS);
    for round in 0..3 {
        append_round(&store, &streams, round).await;
    }

    // The relay and the consumer run in tasks of their own throughout.
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay_store = store.clone();
    let relay = tokio::spawn(async move {
        let config = RelayConfig {
            window: 8,
            ..RelayConfig::default()
        };
        let scheme = SubjectScheme::new("bank").expect("a valid prefix");
        let mut relay =
            Relay::new("kafka-outage", &relay_store, &publisher, scheme).with_config(config);
        let shutdown = async {
            let _ = relay_stopped.await;
        };
        relay
            .run_until(shutdown)
            .await
            .expect("the relay runs until stopped")
    });
    let settings = GroupSettings::new(TOPIC, "ledger")
        .with_session_timeout(Duration::from_secs(6))
        .with_commit_interval(Duration::from_millis(100));
    let mut subscription =
        KafkaSubscription::connect(&broker.url(), settings).expect("subscribing");
    let ledger = Ledger::default();
    let applied = ledger.applied.clone();
    let mut consumer = Consumer::new(TurnInbox::default(), ledger);
    let (stop_consumer, consumer_stopped) = oneshot::channel::<()>();
    let consuming = tokio::spawn(async move {
        let shutdown = async {
            let _ = consumer_stopped.await;
        };
        consumer
            .run_until(&mut subscription, shutdown)
            .await
            .expect("the subscription stays open")
    });
    let limit = Duration::from_secs(90);
    let first = STREAMS as u64 * 3;
    wait_until("the first rounds applied", limit, || {
        total(&applied) == first
    })
    .await;

    // The broker dies; the bank goes on appending; the broker comes back on its data.
    broker.kill();
    for round in 3..6 {
        append_round(&store, &streams, round).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart();
    for round in 6..8 {
        append_round(&store, &streams, round).await;
    }
    let all = STREAMS as u64 * 8;
    wait_until("every event applied after the restart", limit, || {
        total(&applied) >= all
    })
    .await;
    assert_exactly_once(&applied, &streams, 8);

    let _ = stop_relay.send(());
    let relay_stats = tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("the relay stops within 30 s")
        .expect("the relay's task");
    let _ = stop_consumer.send(());
    let stats = tokio::time::timeout(Duration::from_secs(30), consuming)
        .await
        .expect("the consumer stops within 30 s")
        .expect("the consumer's task");
    assert_eq!(stats.applied, all, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert!(relay_stats.published >= all, "{relay_stats:?}");
    assert_exactly_once(&applied, &streams, 8);
}

/// A TCP proxy in front of a broker that cuts the connection carrying each of the first
/// `cuts` CreateTopics requests (Kafka API key 19) instead of forwarding it: a broker
/// that dies while a request is in flight, at a chosen moment.
struct CuttingProxy {
    port: u16,
    /// The broker's port, once it runs (the proxy starts first: the broker advertises
    /// the proxy's port); connections before that are dropped.
    target: Arc<std::sync::OnceLock<u16>>,
    cut: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CuttingProxy {
    fn start(cuts: u64) -> CuttingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let (cut, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let target = Arc::new(std::sync::OnceLock::<u16>::new());
        let thread = {
            let (cut, stop, target) = (cut.clone(), stop.clone(), target.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let Some(&target) = target.get() else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let cut = cut.clone();
                    std::thread::spawn(move || forward(client, server, &cut, cuts));
                }
            })
        };
        CuttingProxy {
            port,
            target,
            cut,
            stop,
            thread: Some(thread),
        }
    }
}

/// Copies `client`'s requests to `server` frame by frame (and the answers back), cutting
/// both connections at a CreateTopics request while fewer than `cuts` were cut.
fn forward(client: std::net::TcpStream, server: std::net::TcpStream, cut: &AtomicU64, cuts: u64) {
    use std::io::{Read, Write};
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    let answers = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
    });
    let (mut client, mut server) = (client, server);
    loop {
        let mut length = [0u8; 4];
        if client.read_exact(&mut length).is_err() {
            break;
        }
        let mut body = vec![0u8; usize::try_from(u32::from_be_bytes(length)).unwrap_or(0)];
        if client.read_exact(&mut body).is_err() {
            break;
        }
        let api_key = body.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
        if api_key == Some(19) && cut.fetch_add(1, Ordering::SeqCst) < cuts {
            break;
        }
        if server.write_all(&length).is_err() || server.write_all(&body).is_err() {
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = answers.join();
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A broker that hangs up while the topic's creation is in flight (twice) is asked
/// again: `ensure_topic` creates the topic instead of failing at the first dropped
/// connection (a relay started during a broker restart used to exit with "Broker
/// transport failure").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topic_asks_again_when_the_broker_hangs_up() {
    let proxy = CuttingProxy::start(2);
    let Some(broker) = PrivateKafka::start_advertising(Storage::Memory, Some(proxy.port)) else {
        return;
    };
    let target = broker.brokers();
    let target = target
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("a port");
    proxy
        .target
        .set(target)
        .expect("the broker's port, set once");
    let url = format!("kafka://127.0.0.1:{}", proxy.port);
    let publisher = KafkaPublisher::connect(&url, "made-after-hang-ups").expect("a publisher");
    let ensured = tokio::time::timeout(Duration::from_secs(60), publisher.ensure_topic(2))
        .await
        .expect("ensure_topic answers within its 30 s (and the 60 s of this test)");
    let cut = proxy.cut.load(Ordering::SeqCst);
    ensured.unwrap_or_else(|e| panic!("the topic is created after {cut} hang-up(s): {e}"));
    assert!(
        cut >= 3,
        "two creations were cut, the third went through: {cut}"
    );
    drop(broker);
}

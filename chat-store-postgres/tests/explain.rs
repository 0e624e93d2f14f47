//! A history page is one range scan of the primary key at any table size: on 200,000 messages
//! in 1,000 rooms, the plans of both page queries (with the values, and the generic plan a
//! cached prepared statement ends up with) scan the primary key over the page's seq range, in
//! index order with no sort (but for a range smaller than the limit), never sequentially, and
//! a page reads a few dozen buffers.

mod common;

use std::time::Instant;

use chat_core::Store;
use chat_store_postgres::sql;
use common::*;

const ROOMS: u64 = 1_000;
const PER_ROOM: u64 = 200;

/// The plan of `sql` (`$1` room, `$2` epoch, then `rest`), with the values and generic.
async fn plans(c: &tokio_postgres::Client, sql: &str, types: &str, args: &str) -> [String; 2] {
    let lines = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    c.batch_execute(&format!("DEALLOCATE ALL; PREPARE page({types}) AS {sql}")).await.unwrap();
    c.batch_execute("SET plan_cache_mode = force_custom_plan").await.unwrap();
    let custom = lines(c.simple_query(&format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE page({args})")).await.unwrap());
    c.batch_execute("SET plan_cache_mode = force_generic_plan").await.unwrap();
    let generic = lines(c.simple_query(&format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE page({args})")).await.unwrap());
    [custom, generic]
}

/// `plan` reads the room's seq range from the primary key and nothing else; `ordered`: in the
/// index's order (backward for the newest), stopping at the limit, with no sort.
fn assert_range_scan(plan: &str, ordered: Option<bool>) {
    assert!(plan.contains(" chat_messages_pkey"), "not a primary key scan:\n{plan}");
    assert!(
        plan.lines().any(|l| l.contains("Index Cond") && l.contains("room =") && l.contains("seq <")),
        "the scan is not bounded by room, epoch and seq:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "a sequential scan:\n{plan}");
    if let Some(backward) = ordered {
        assert!(plan.contains("Index Scan") && !plan.contains("Sort"), "not read in index order:\n{plan}");
        assert_eq!(plan.contains("Backward"), backward, "direction:\n{plan}");
    }
    // A page of 50 reads a few index pages and the heap pages of its rows (the rooms' messages
    // are interleaved, so about one each), never the table's thousands.
    let buffers: u64 = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Buffers: shared hit="))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0);
    assert!(buffers < 80, "{buffers} buffers for one page:\n{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_an_index_range_scan_at_any_table_size() {
    let f = fixture().await;
    // Group commits as the engine makes them: each batch one message for every room.
    let started = Instant::now();
    for seq in 1..=PER_ROOM {
        let batch: Vec<_> = (0..ROOMS).map(|r| rec(&format!("room-{r:04}"), "e", seq)).collect();
        f.store.append(&batch).await.unwrap();
    }
    eprintln!("appended {} messages in batches of {ROOMS} in {:?}", ROOMS * PER_ROOM, started.elapsed());
    let c = client(&f.db.url()).await;
    c.batch_execute("ANALYZE").await.unwrap();
    assert_eq!(count(&c, "SELECT 1 FROM chat_messages").await, (ROOMS * PER_ROOM) as i64);

    let room = "'room-0500'";
    let newest =
        plans(&c, sql::PAGE_BEFORE, "text, text, int8, int8", &format!("{room}, 'e', 9223372036854775807, 50")).await;
    let before = plans(&c, sql::PAGE_BEFORE, "text, text, int8, int8", &format!("{room}, 'e', 120, 50")).await;
    let after = plans(
        &c,
        sql::PAGE_AFTER,
        "text, text, int8, int8, int8",
        &format!("{room}, 'e', 30, 9223372036854775807, 50"),
    )
    .await;
    let both = plans(&c, sql::PAGE_AFTER, "text, text, int8, int8, int8", &format!("{room}, 'e', 30, 60, 50")).await;
    for plan in newest.iter().chain(&before) {
        assert_range_scan(plan, Some(true));
    }
    for plan in &after {
        assert_range_scan(plan, Some(false));
    }
    // Bounded on both sides, the range may be smaller than the limit: the planner may then
    // fetch it by bitmap and sort those few rows, still only the range.
    for plan in &both {
        assert_range_scan(plan, None);
    }
    eprintln!("newest page, generic plan:\n{}", newest[1]);

    // And through the store.
    let r = self::room("room-0500");
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(f.store.page(&r, "e", q(None, None, 50)).await.unwrap().len(), 50);
    }
    eprintln!("100 pages of 50 through the store in {:?}", started.elapsed());

    // Retention's planning query probes each room's primary key; it never reads the table.
    let names: Vec<String> = (0..500).map(|r| format!("'room-{r:04}'")).collect();
    let args = format!("ARRAY[{}], array_fill(150000::int8, ARRAY[500]), 5000", names.join(","));
    for plan in plans(&c, sql::RETAIN_PLAN, "text[], int8[], int8", &args).await {
        assert!(!plan.contains("Seq Scan on chat_messages"), "retention planning reads the table:\n{plan}");
    }
    let started = Instant::now();
    let keep = |_: &chat_core::RoomName| chat_core::Retention {
        max_age: std::time::Duration::from_secs(3600),
        max_count: 150,
    };
    assert_eq!(f.store.retain(&keep, 3_600_000).await.unwrap(), ROOMS * 50);
    eprintln!("retention deleted {} of {} messages in {:?}", ROOMS * 50, ROOMS * PER_ROOM, started.elapsed());
    let started = Instant::now();
    assert_eq!(f.store.retain(&keep, 3_600_000).await.unwrap(), 0);
    eprintln!("retention with nothing to delete in {:?}", started.elapsed());
}

//! The original prototype's sanity run, against a real 3-host cluster: 1000 preloaded keys,
//! then 1000 random operations (15% put, 35% delete, 40% get of a present key, 10% get of an
//! absent key), every answer checked against an in-memory map.

mod common;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_sanity_run_matches_a_hashmap() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    let mut rng = StdRng::seed_from_u64(common::seed());
    let mut model: HashMap<String, String> = HashMap::new();
    for i in 0..1000 {
        let (k, v) = (format!("key-{i}"), format!("value-{}", rng.gen::<u64>()));
        client
            .put(k.as_bytes(), v.as_bytes())
            .await
            .expect("preload put");
        model.insert(k, v);
    }
    let mut absent = 0u64;
    for step in 0..1000 {
        let dice: f64 = rng.gen();
        if dice < 0.15 {
            let k = format!("key-{}", rng.gen_range(0..1500));
            let v = format!("value-{}", rng.gen::<u64>());
            client.put(k.as_bytes(), v.as_bytes()).await.expect("put");
            model.insert(k, v);
        } else if dice < 0.50 {
            let Some(k) = pick(&model, &mut rng) else {
                continue;
            };
            client.delete(k.as_bytes()).await.expect("delete");
            model.remove(&k);
        } else if dice < 0.90 {
            let Some(k) = pick(&model, &mut rng) else {
                continue;
            };
            let got = client.get(k.as_bytes()).await.expect("get");
            assert_eq!(
                got.as_deref(),
                Some(model[&k].as_bytes()),
                "step {step}: get {k}"
            );
        } else {
            absent += 1;
            let k = format!("absent-{absent}-{}", rng.gen::<u32>());
            assert_eq!(
                client.get(k.as_bytes()).await.expect("get absent"),
                None,
                "step {step}"
            );
        }
    }
    // Finally the whole model, present and deleted keys alike.
    for i in 0..1500 {
        let k = format!("key-{i}");
        let got = client.get(k.as_bytes()).await.expect("final get");
        assert_eq!(
            got.as_deref(),
            model.get(&k).map(|v| v.as_bytes()),
            "final {k}"
        );
    }
}

fn pick(model: &HashMap<String, String>, rng: &mut StdRng) -> Option<String> {
    if model.is_empty() {
        return None;
    }
    let i = rng.gen_range(0..model.len());
    model.keys().nth(i).cloned()
}

//! Generated fidelity cases: random stores and requests over `generated/schema.cedarschema`
//! (every value kind, extension values with edge cases, optional attributes, dangling
//! references, hierarchies), decided by the policies of `generated/policies.cedar`, which
//! exercise every operator on them. Each case is compared on every path, like a hand-written
//! world.

use std::cell::Cell;
use std::path::Path;

use proptest::prelude::{Rng, any};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use super::{World, compare, report};

struct Gen(TestRng);

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Gen(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.0.next_u64() % (hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.0.next_u64() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn long(&mut self) -> i64 {
        match self.below(4) {
            0 => *self.pick(&[
                0,
                1,
                -1,
                100,
                69001,
                70000,
                i64::MAX,
                i64::MIN,
                i64::MAX / 2,
            ]),
            _ => self.range(-50, 150),
        }
    }

    fn string(&mut self) -> String {
        const PIECES: [&str; 12] = [
            "a",
            "b",
            "ab",
            "*",
            "Lyon",
            "ok",
            " go",
            "",
            "é",
            "a*b",
            "xaybz",
            "\u{1F600}",
        ];
        (0..self.below(4)).map(|_| *self.pick(&PIECES)).collect()
    }

    fn ip(&mut self) -> String {
        if self.chance(25) {
            return (*self.pick(&[
                "::1",
                "2001:db8::1",
                "2001:db8::/32",
                "fe80::/10",
                "ff02::1",
            ]))
            .to_owned();
        }
        let first = *self.pick(&[10, 127, 192, 224, 203]);
        let mut ip = format!(
            "{first}.{}.{}.{}",
            self.below(3),
            self.below(256),
            self.below(256)
        );
        if self.chance(40) {
            ip.push_str(&format!("/{}", *self.pick(&[8, 16, 24, 32])));
        }
        ip
    }

    fn decimal(&mut self) -> String {
        let sign = if self.chance(30) { "-" } else { "" };
        let int = if self.chance(10) {
            922_337_203_685_476
        } else {
            self.range(0, 20)
        };
        let digits = 1 + self.below(4);
        let frac: String = (0..digits)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect();
        format!("{sign}{int}.{frac}")
    }

    fn datetime(&mut self) -> String {
        let date = format!(
            "{:04}-{:02}-{:02}",
            self.range(1960, 2100),
            self.range(1, 12),
            self.range(1, 28)
        );
        match self.below(4) {
            0 => date,
            1 => format!(
                "{date}T{:02}:{:02}:{:02}Z",
                self.below(24),
                self.below(60),
                self.below(60)
            ),
            2 => format!(
                "{date}T{:02}:00:00.{:03}Z",
                self.below(24),
                self.below(1000)
            ),
            _ => format!(
                "{date}T{:02}:30:00{}{:02}00",
                self.below(24),
                self.pick(&["+", "-"]),
                self.below(14)
            ),
        }
    }

    fn duration(&mut self) -> String {
        let sign = if self.chance(15) { "-" } else { "" };
        let mut parts = String::new();
        for (unit, max) in [("d", 40000), ("h", 30), ("m", 90), ("s", 90), ("ms", 1500)] {
            if self.chance(40) {
                parts.push_str(&format!("{}{unit}", self.range(0, max)));
            }
        }
        if parts.is_empty() {
            format!("{sign}{}h", self.below(48))
        } else {
            format!("{sign}{parts}")
        }
    }

    fn subset(&mut self, items: &[Value], percent: u64) -> Vec<Value> {
        items
            .iter()
            .filter(|_| self.chance(percent))
            .cloned()
            .collect()
    }
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": format!("Gen::{ty}"), "id": id})
}

fn eref(ty: &str, id: &str) -> Value {
    json!({"__entity": uid(ty, id)})
}

fn ext(f: &str, arg: String) -> Value {
    json!({"__extn": {"fn": f, "arg": arg}})
}

/// A store and requests drawn from `seed`.
fn world(seed: u64) -> (Vec<Value>, Vec<Value>) {
    let mut g = Gen::new(seed);
    let teams: Vec<String> = (0..2 + g.below(4)).map(|i| format!("t{i}")).collect();
    let people: Vec<String> = (0..3 + g.below(6)).map(|i| format!("p{i}")).collect();
    let items: Vec<String> = (0..3 + g.below(6)).map(|i| format!("i{i}")).collect();
    let person_or_ghost = |g: &mut Gen| {
        if g.chance(15) {
            "ghost".to_owned()
        } else {
            g.pick(&people).clone()
        }
    };
    let words: Vec<Value> = ["a", "b", "ok", "x", ""].iter().map(|w| json!(w)).collect();
    let mut entities = Vec::new();
    for (i, t) in teams.iter().enumerate() {
        let parents: Vec<Value> = (0..i)
            .filter(|_| g.chance(40))
            .map(|j| uid("Team", &teams[j]))
            .collect();
        entities.push(
            json!({"uid": uid("Team", t), "attrs": {"name": g.string()}, "parents": parents}),
        );
    }
    for p in &people {
        let mut address =
            json!({"city": if g.chance(40) { "Lyon".to_owned() } else { g.string() }});
        if g.chance(60) {
            address["zip"] = json!(g.long());
        }
        let scores: Vec<Value> = (0..g.below(4)).map(|_| json!(g.long())).collect();
        let mut attrs = json!({
            "age": g.long(),
            "active": g.chance(70),
            "scores": scores,
            "labels": g.subset(&words, 30),
            "home": ext("ip", g.ip()),
            "rating": ext("decimal", g.decimal()),
            "born": ext("datetime", g.datetime()),
            "tenure": ext("duration", g.duration()),
            "address": address,
        });
        if g.chance(50) {
            attrs["nick"] = json!(g.string());
        }
        if g.chance(60) {
            attrs["friend"] = eref("Person", &person_or_ghost(&mut g));
        }
        if g.chance(60) {
            attrs["manager"] = eref("Person", &person_or_ghost(&mut g));
        }
        let parents: Vec<Value> = teams
            .iter()
            .filter(|_| g.chance(35))
            .map(|t| uid("Team", t))
            .collect();
        entities.push(json!({"uid": uid("Person", p), "attrs": attrs, "parents": parents}));
    }
    let refs: Vec<Value> = people
        .iter()
        .map(|p| eref("Person", p))
        .chain([eref("Person", "ghost")])
        .collect();
    for (i, it) in items.iter().enumerate() {
        let mut parents: Vec<Value> = teams
            .iter()
            .filter(|_| g.chance(30))
            .map(|t| uid("Team", t))
            .collect();
        if i > 0 && g.chance(30) {
            parents.push(uid("Item", &items[g.below(i)]));
        }
        let attrs = json!({
            "owner": eref("Person", &person_or_ghost(&mut g)),
            "price": ext("decimal", g.decimal()),
            "tags": g.subset(&words, 30),
            "size": g.long(),
            "created": ext("datetime", g.datetime()),
            "ttl": ext("duration", g.duration()),
            "subnet": ext("ip", g.ip()),
            "watchers": g.subset(&refs, 30),
        });
        entities.push(json!({"uid": uid("Item", it), "attrs": attrs, "parents": parents}));
    }
    for a in ["look", "change"] {
        entities.push(json!({"uid": uid("Action", a), "attrs": {}, "parents": []}));
    }
    let mut requests = Vec::new();
    for _ in 0..50 {
        let mut context = json!({
            "when": ext("datetime", g.datetime()),
            "from": ext("ip", g.ip()),
            "amount": g.long(),
            "flags": g.subset(&[json!("strict"), json!("x")], 50),
        });
        if g.chance(50) {
            context["note"] = json!(if g.chance(50) {
                format!("ok{}", g.string())
            } else {
                g.string()
            });
        }
        let resource = if g.chance(10) {
            "ghost".to_owned()
        } else {
            g.pick(&items).clone()
        };
        requests.push(json!({
            "principal": uid("Person", &person_or_ghost(&mut g)),
            "action": uid("Action", if g.chance(50) { "look" } else { "change" }),
            "resource": uid("Item", &resource),
            "context": context,
        }));
    }
    (entities, requests)
}

/// Runs `cases` generated worlds and reports how many requests were compared.
pub fn run(cases: u32) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fidelity/generated");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let (requests_seen, compared, allowed) = (Cell::new(0), Cell::new(0), Cell::new(0));
    runner
        .run(&any::<u64>(), |seed| {
            let (entities, requests) = world(seed);
            let world = World::new(&dir, entities);
            allowed.set(
                allowed.get()
                    + requests
                        .iter()
                        .filter(|r| world.cedar(r).is_some_and(|a| a.0 == "Allow"))
                        .count(),
            );
            compared.set(compared.get() + rt.block_on(compare(&world, &requests)));
            requests_seen.set(requests_seen.get() + requests.len());
            Ok(())
        })
        .unwrap();
    report(&format!(
        "fidelity: generated worlds: {cases} worlds, {} requests ({} allowed by Cedar), {} comparisons with Cedar, all equal",
        requests_seen.get(),
        allowed.get(),
        compared.get()
    ));
    // The generator must reach both outcomes often, or the comparison proves little.
    assert!(
        allowed.get() * 20 > requests_seen.get(),
        "{} allowed",
        allowed.get()
    );
    assert!(
        allowed.get() * 20 < requests_seen.get() * 19,
        "{} allowed",
        allowed.get()
    );
}

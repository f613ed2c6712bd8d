//! A deterministic synthetic platform (organizations, users, projects of every visibility,
//! datasets, runs, models) for benchmarks and the load generator. Entities stream out in
//! order, parents before children, so a million of them never sit in memory at once.

use serde_json::{Value, json};

/// How big a platform to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Organizations.
    pub orgs: usize,
    /// Users per organization.
    pub users_per_org: usize,
    /// Projects per organization.
    pub projects_per_org: usize,
    /// Datasets, runs and models per project.
    pub items_per_project: usize,
}

impl Shape {
    /// A shape of about `total` entities: 10 projects and 10 users per organization and the
    /// rest items, split over enough organizations that no project is huge.
    pub fn about(total: usize) -> Shape {
        let items_per_project = (total / 2_000).clamp(5, 100);
        let per_org = 10 + 10 * (1 + items_per_project) + 1;
        Shape {
            orgs: (total / per_org).max(1),
            users_per_org: 10,
            projects_per_org: 10,
            items_per_project,
        }
    }

    /// Entities this shape generates.
    pub fn total(&self) -> usize {
        self.orgs * (1 + self.users_per_org + self.projects_per_org * (1 + self.items_per_project))
    }
}

/// splitmix64: tiny, fast and deterministic, which is all synthetic data needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Id helpers, so generators and request mixes agree on names.
pub fn org_id(o: usize) -> String {
    format!("org{o}")
}
/// User `u` of organization `o`.
pub fn user_id(o: usize, u: usize) -> String {
    format!("u{o}-{u}")
}
/// Project `p` of organization `o`.
pub fn project_id(o: usize, p: usize) -> String {
    format!("p{o}-{p}")
}
/// Item `i` of project `p` of organization `o`, and its type.
pub fn item(o: usize, p: usize, i: usize) -> (&'static str, String) {
    (["Dataset", "Run", "Model"][i % 3], format!("i{o}-{p}-{i}"))
}
/// The visibility of project `p`: private, public and shared in turn.
pub fn visibility(p: usize) -> &'static str {
    ["private", "public", "shared"][p % 3]
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

fn eref(ty: &str, id: &str) -> Value {
    json!({"__entity": {"type": ty, "id": id}})
}

/// Every entity of the platform, in Cedar entity JSON, parents first.
pub fn entities(shape: Shape, seed: u64) -> impl Iterator<Item = Value> {
    let mut rng = Rng::new(seed);
    (0..shape.orgs).flat_map(move |o| {
        let mut out = Vec::with_capacity(1 + shape.users_per_org + shape.projects_per_org * (1 + shape.items_per_project));
        let org = org_id(o);
        out.push(json!({
            "uid": uid("Organization", &org),
            "attrs": {"admins": [eref("User", &user_id(o, 0))], "quota_bytes": 1_i64 << 50},
            "parents": [],
        }));
        for u in 0..shape.users_per_org {
            out.push(json!({"uid": uid("User", &user_id(o, u)), "attrs": {}, "parents": [uid("Organization", &org)]}));
        }
        for p in 0..shape.projects_per_org {
            let project = project_id(o, p);
            let owner = user_id(o, rng.below(shape.users_per_org));
            let members: Vec<Value> = (0..3)
                .map(|_| eref("User", &user_id(o, rng.below(shape.users_per_org))))
                .collect();
            out.push(json!({
                "uid": uid("Project", &project),
                "attrs": {"org": eref("Organization", &org), "owner": eref("User", &owner),
                          "visibility": visibility(p), "members": members},
                "parents": [uid("Organization", &org)],
            }));
            for i in 0..shape.items_per_project {
                let (ty, id) = item(o, p, i);
                let owner = user_id(o, rng.below(shape.users_per_org));
                out.push(json!({
                    "uid": uid(ty, &id),
                    "attrs": {"project": eref("Project", &project), "owner": eref("User", &owner),
                              "size_bytes": (rng.next_u64() % (1 << 30)) as i64},
                    "parents": [uid("Project", &project)],
                }));
            }
        }
        out
    })
}

/// One request of the load mix, as Cedar uid strings `(principal, action, resource)`: every
/// rule, allowed and denied, with one principal in ten from another organization.
pub fn request(rng: &mut Rng, shape: Shape) -> (String, String, String) {
    let o = rng.below(shape.orgs);
    let po = if rng.below(10) == 0 && shape.orgs > 1 {
        (o + 1) % shape.orgs
    } else {
        o
    };
    let principal = format!("User::\"{}\"", user_id(po, rng.below(shape.users_per_org)));
    let p = rng.below(shape.projects_per_org);
    let (resource, actions): (String, &[&str]) = match rng.below(10) {
        0 => (
            format!("Organization::\"{}\"", org_id(o)),
            &[
                "view_storage",
                "view_activity",
                "manage_users",
                "create_project",
            ],
        ),
        1 | 2 => (
            format!("Project::\"{}\"", project_id(o, p)),
            &[
                "view",
                "edit",
                "delete",
                "share",
                "add_content",
                "view_storage",
            ],
        ),
        _ => {
            let (ty, id) = item(o, p, rng.below(shape.items_per_project));
            let actions: &[&str] = if ty == "Dataset" {
                &["view", "view", "edit", "delete", "duplicate"]
            } else {
                &["view", "view", "edit", "delete"]
            };
            (format!("{ty}::\"{id}\""), actions)
        }
    };
    let action = format!("Action::\"{}\"", actions[rng.below(actions.len())]);
    (principal, action, resource)
}

/// A listing request, the shape a UI sends to filter what it shows: one principal (one time in
/// ten from another organization), one action, and `n` datasets of one organization, as Cedar
/// uid strings `(principal, action, resources)`.
pub fn listing(rng: &mut Rng, shape: Shape, n: usize) -> (String, String, Vec<String>) {
    let o = rng.below(shape.orgs);
    let po = if rng.below(10) == 0 && shape.orgs > 1 {
        (o + 1) % shape.orgs
    } else {
        o
    };
    let principal = format!("User::\"{}\"", user_id(po, rng.below(shape.users_per_org)));
    let action = ["view", "view", "duplicate"][rng.below(3)];
    // Datasets are every third item.
    let datasets = shape.items_per_project.div_ceil(3);
    let resources = (0..n)
        .map(|_| {
            let p = rng.below(shape.projects_per_org);
            let (_, id) = item(o, p, 3 * rng.below(datasets));
            format!("Dataset::\"{id}\"")
        })
        .collect();
    (principal, format!("Action::\"{action}\""), resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_about_the_size_asked() {
        for total in [1_000, 100_000, 1_000_000] {
            let shape = Shape::about(total);
            let n = shape.total();
            assert!(
                n as f64 > total as f64 * 0.9 && n as f64 <= total as f64 * 1.1,
                "{total}: {shape:?} = {n}"
            );
        }
        assert_eq!(
            entities(Shape::about(1_000), 7).count(),
            Shape::about(1_000).total()
        );
    }
}

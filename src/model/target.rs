//! What a target name means. The operator names instances by group
//! (`text`), by instance id (`text-1`) or as `all`; the wire carries those
//! names as strings. Here, and nowhere else, they are resolved against the
//! instances there are.

/// The wire spelling of "every instance".
pub const ALL: &str = "all";

/// Whether a list of names asks for everything.
pub fn names_all(names: &[String]) -> bool {
    names.iter().any(|n| n == ALL)
}

/// One instance, as targets see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub id: &'a str,
    pub group: &'a str,
}

/// A resolved target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every instance.
    All,
    /// Every instance of a group.
    Group(String),
    /// One instance.
    Instance(String),
}

impl Target {
    /// What `name` means among `members`: [`ALL`], else an instance id,
    /// else a group that has an instance. `None` when it names nothing.
    pub fn resolve(name: &str, members: &[Member<'_>]) -> Option<Target> {
        if name == ALL {
            return Some(Target::All);
        }
        if members.iter().any(|m| m.id == name) {
            return Some(Target::Instance(name.to_string()));
        }
        members
            .iter()
            .any(|m| m.group == name)
            .then(|| Target::Group(name.to_string()))
    }

    /// Whether the target takes in `m`.
    pub fn covers(&self, m: Member<'_>) -> bool {
        match self {
            Target::All => true,
            Target::Group(g) => m.group == g,
            Target::Instance(id) => m.id == id,
        }
    }

    /// The name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Target::All => ALL,
            Target::Group(n) | Target::Instance(n) => n,
        }
    }
}

/// Resolves every name; the first that names nothing is the error.
/// `groups` are the configured groups: one with no instance now (an
/// autoscaled group at zero) is still a target.
pub fn resolve_all(
    names: &[String],
    members: &[Member<'_>],
    groups: &[&str],
) -> Result<Vec<Target>, String> {
    names
        .iter()
        .map(|n| {
            Target::resolve(n, members)
                .or_else(|| {
                    groups
                        .contains(&n.as_str())
                        .then(|| Target::Group(n.clone()))
                })
                .ok_or_else(|| n.clone())
        })
        .collect()
}

/// Whether `m` is among `targets`; an empty list takes in everything.
pub fn covered(targets: &[Target], m: Member<'_>) -> bool {
    targets.is_empty() || targets.iter().any(|t| t.covers(m))
}

/// The ids `targets` take in: target by target, each target's members in
/// the order of `members`, each id once.
pub fn select<'a>(targets: &[Target], members: &[Member<'a>]) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    for t in targets {
        for m in members.iter().filter(|m| t.covers(**m)) {
            if !out.contains(&m.id) {
                out.push(m.id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<Member<'static>> {
        [
            ("text-1", "text"),
            ("text-2", "text"),
            ("text-10", "text"),
            ("webhook-1", "webhook"),
        ]
        .into_iter()
        .map(|(id, group)| Member { id, group })
        .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_resolve_to_all_instance_or_group() {
        let m = members();
        assert_eq!(Target::resolve("all", &m), Some(Target::All));
        assert_eq!(
            Target::resolve("text-2", &m),
            Some(Target::Instance("text-2".into()))
        );
        assert_eq!(
            Target::resolve("text", &m),
            Some(Target::Group("text".into()))
        );
        assert_eq!(Target::resolve("text-3", &m), None);
        assert_eq!(Target::resolve("", &m), None);
        // "all" means everything even with no instance at all.
        assert_eq!(Target::resolve("all", &[]), Some(Target::All));
        assert_eq!(Target::resolve("text", &[]), None);
        assert_eq!(
            resolve_all(&names(&["text", "nope", "zip"]), &m, &[]),
            Err("nope".into())
        );
        // A configured group with no instance now is still a target.
        assert_eq!(
            resolve_all(&names(&["zero"]), &m, &["text", "zero"]),
            Ok(vec![Target::Group("zero".into())])
        );
        assert_eq!(Target::Group("text".into()).name(), "text");
        assert_eq!(Target::All.name(), "all");
        assert!(names_all(&names(&["text", "all"])));
        assert!(!names_all(&names(&["text"])));
    }

    #[test]
    fn an_instance_id_wins_over_a_group_of_the_same_name() {
        // Group "a" has a-1; group "a-1" has a-1-1.
        let m = [
            Member {
                id: "a-1",
                group: "a",
            },
            Member {
                id: "a-1-1",
                group: "a-1",
            },
        ];
        let t = Target::resolve("a-1", &m).unwrap();
        assert_eq!(t, Target::Instance("a-1".into()));
        assert_eq!(select(&[t], &m), vec!["a-1"]);
    }

    #[test]
    fn select_keeps_target_order_then_member_order_each_once() {
        let m = members();
        let t = resolve_all(&names(&["webhook-1", "text", "text-2", "all"]), &m, &[]).unwrap();
        assert_eq!(
            select(&t, &m),
            vec!["webhook-1", "text-1", "text-2", "text-10"]
        );
        assert!(select(&[], &m).is_empty());
        let text = [Target::Group("text".into())];
        assert!(covered(&text, m[0]) && !covered(&text, m[3]));
        assert!(covered(&[], m[3]), "no target takes in everything");
    }
}

//! The Kubernetes example (`deploy/kubernetes.yaml`) agrees with the binary and the policies:
//! every flag and `POLICYD_*` variable of the sidecar is one `policyd serve` takes (the whole
//! command line parses), probes, mounts and flags name the same ports and paths, and the
//! ConfigMap holds exactly the files of `policies/`.
//!
//! After editing `policies/`, regenerate the ConfigMap with
//! `UPDATE_DEPLOY=1 cargo test --test deploy`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use policyd::cli::{Cli, Command};
use policyd::config::ListenAddr;
use serde::Deserialize;
use serde_json::Value;

const BEGIN: &str = "# BEGIN GENERATED from policies/";
const END: &str = "# END GENERATED";
/// The ConfigMap of the policies.
const CONFIGMAP: &str = "policyd-policies";
/// Variables the sidecar may set that are not `policyd serve` flags.
const OTHER_ENV: &[&str] = &["RUST_LOG", "CVC5"];

fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes.yaml")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The top-level policy sources of `policies/`, as the loader reads them.
fn policy_sources() -> BTreeMap<String, String> {
    std::fs::read_dir(common::repo_policies())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "cedar" || e == "cedarschema")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// The ConfigMap of the policy sources, as YAML.
fn generated_configmap(name: &str) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    app: ml-platform-api\ndata:\n"
    );
    for (file, text) in policy_sources() {
        let body = text.trim_end_matches('\n');
        let chomp = match text.len() - body.len() {
            0 => "-",
            1 => "",
            _ => "+",
        };
        let indent = if body.starts_with(' ') { "2" } else { "" };
        out.push_str(&format!("  {file}: |{indent}{chomp}\n"));
        for line in text.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

/// `--name=value` or `--name` as (name, value).
fn flag(arg: &str) -> Option<(&str, Option<&str>)> {
    let rest = arg.strip_prefix("--")?;
    Some(match rest.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (rest, None),
    })
}

#[test]
fn the_configmap_holds_exactly_the_policy_files() {
    let path = manifest_path();
    let text = std::fs::read_to_string(&path).unwrap();
    if std::env::var_os("UPDATE_DEPLOY").is_some() {
        let start = text.find(BEGIN).unwrap() + BEGIN.len();
        let start = start + text[start..].find('\n').unwrap() + 1;
        let end = text.find(END).unwrap();
        let updated = format!(
            "{}{}{}",
            &text[..start],
            generated_configmap(CONFIGMAP),
            &text[end..]
        );
        std::fs::write(&path, updated).unwrap();
        return;
    }
    let docs = documents(&text);
    let configmap = kind(&docs, "ConfigMap");
    assert_eq!(configmap["metadata"]["name"], CONFIGMAP);
    let data: BTreeMap<String, String> = configmap["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let files = policy_sources();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>(),
        "regenerate with UPDATE_DEPLOY=1 cargo test --test deploy"
    );
    for (file, text) in &files {
        assert_eq!(
            &data[file], text,
            "{file} differs; regenerate with UPDATE_DEPLOY=1 cargo test --test deploy"
        );
    }
}

#[test]
fn the_sidecar_runs_serve_with_real_flags_mounts_and_probes() {
    let docs = documents(&std::fs::read_to_string(manifest_path()).unwrap());
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = container(deployment, "policyd");

    // Every flag is a flag of `policyd serve` (or a global one).
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let args = || serve.get_arguments().chain(cli.get_arguments());
    let longs: BTreeSet<&str> = args().filter_map(|a| a.get_long()).collect();
    let argv: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(argv.first(), Some(&"serve"), "{argv:?}");
    for arg in &argv[1..] {
        let (name, _) = flag(arg).unwrap_or_else(|| panic!("`{arg}` is not a --flag"));
        assert!(
            longs.contains(name),
            "`--{name}` is not a policyd serve flag"
        );
    }

    // Every POLICYD_* variable is one a flag reads; its value is parsed as that flag's.
    let by_env: BTreeMap<String, String> = args()
        .filter_map(|a| Some((a.get_env()?.to_str()?.to_owned(), a.get_long()?.to_owned())))
        .collect();
    let mut with_env: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    for var in sidecar["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: a literal value"));
        match by_env.get(name) {
            Some(long) => with_env.push(format!("--{long}={value}")),
            None => assert!(
                OTHER_ENV.contains(&name),
                "{name} is neither a policyd variable nor one of {OTHER_ENV:?}"
            ),
        }
    }
    let parsed = Cli::try_parse_from(std::iter::once("policyd".to_owned()).chain(with_env))
        .unwrap_or_else(|e| panic!("the sidecar's command line does not parse: {e}"));
    let Command::Serve(serve_args) = parsed.command else {
        panic!("not serve");
    };

    // Paths and ports agree with the mounts, volumes and probes.
    let mounts: BTreeMap<&str, &str> = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let volume = |mount_path: &Path| -> &Value {
        let name = mounts
            .get(mount_path.to_str().unwrap())
            .unwrap_or_else(|| panic!("nothing is mounted at {}", mount_path.display()));
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let configmap = kind(&docs, "ConfigMap");
    assert_eq!(
        volume(&serve_args.policies)["configMap"]["name"],
        configmap["metadata"]["name"],
        "--policies is the ConfigMap's mount"
    );
    let data = volume(serve_args.db.parent().unwrap());
    assert!(
        data.get("emptyDir").is_some() || data.get("persistentVolumeClaim").is_some(),
        "the store's directory is a writable volume: {data}"
    );
    let token = serve_args.token_file.as_ref().expect("--token-file");
    let secret = kind(&docs, "Secret");
    assert_eq!(
        volume(token.parent().unwrap())["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let key = token.file_name().unwrap().to_str().unwrap();
    assert!(
        secret["stringData"]
            .get(key)
            .or(secret["data"].get(key))
            .is_some(),
        "the Secret has no key {key}"
    );
    // Kubelet probes connect to the pod's IP, so the listener cannot be loopback only; then
    // every route but the probes needs the token.
    let ListenAddr::Tcp(listen) = serve_args.listen else {
        panic!("httpGet probes need a TCP listener");
    };
    assert!(listen.ip().is_unspecified(), "{listen}: probes would fail");
    assert!(!serve_args.open_decisions);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], listen.port(), "{probe}");
    }
    let ports: Vec<&Value> = sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(ports, [&Value::from(listen.port())]);
    // SIGTERM gives requests --shutdown-grace, then flushes the activity log: the pod must
    // wait longer before it is killed.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > serve_args.shutdown_grace.as_secs(), "{grace}");

    // Only the app's port is open to other pods.
    let netpol = kind(&docs, "NetworkPolicy");
    assert_eq!(
        netpol["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    let open: Vec<&Value> = netpol["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .map(|p| &p["port"])
        .collect();
    assert!(!open.is_empty());
    assert!(!open.contains(&&Value::from(listen.port())), "{open:?}");
}

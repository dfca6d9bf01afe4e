//! The load benchmark's quick mode: every scenario briefly (each filter
//! checked on real packets against the reference matcher before it is
//! timed; established flows checked to be established), and its JSON,
//! Markdown and plot written; with the generator at full speed, and
//! throttled to the rates of a much slower machine. No timing is asserted.

use std::{process::Command, sync::Mutex};

use sg_tests::require_root;

#[test]
fn quick_mode_runs_every_scenario() {
    require_root!();
    quick_mode(1);
}

#[test]
fn quick_mode_runs_every_scenario_at_a_low_rate() {
    require_root!();
    quick_mode(16);
}

/// Runs the quick mode with the generator sending one frame in `throttle`,
/// and checks what it wrote; one run at a time, as both generators would
/// take the same CPU.
fn quick_mode(throttle: u32) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("sg-loadbench-{}-{throttle}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_sg-loadbench"))
        .args(["--quick", "--throttle", &throttle.to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running sg-loadbench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "sg-loadbench --quick failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("loadbench.json")).unwrap()).unwrap();
    let rates = report["rates"].as_array().unwrap();
    for filter in ["sg", "nft-rules", "nft-sets", "iptables"] {
        let measured: Vec<_> = rates.iter().filter(|r| r["filter"] == filter).collect();
        // 0 rules: dropped traffic only; 10 and 1000: dropped, new flows
        // and established flows.
        assert_eq!(measured.len(), 7, "{filter}: {stdout}");
        for traffic in ["drop", "pass", "established"] {
            assert!(
                measured.iter().any(|r| r["traffic"] == traffic),
                "{filter}, {traffic}: {stdout}"
            );
        }
        assert!(measured.iter().all(|r| r["pps"].as_f64().unwrap() > 0.0));
    }
    assert_eq!(report["ceilings"].as_array().unwrap().len(), 2);
    assert_eq!(report["throttle"], throttle);
    assert!(report["new_flows"].as_u64().unwrap() > 0);
    assert_eq!(report["iperf"].as_array().unwrap().len(), 5);
    assert_eq!(report["updates"].as_array().unwrap().len(), 4);
    assert!(
        report["generator"]
            .as_str()
            .unwrap()
            .contains("live frames")
    );
    let png = std::fs::read(out.join("loadbench.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(
        std::fs::read_to_string(out.join("loadbench.md"))
            .unwrap()
            .contains("| sg | 1000 | Drop |")
    );
    assert!(
        std::fs::read_to_string(out.join("loadbench.md"))
            .unwrap()
            .contains("| sg | 1000 | Pass, established |")
    );
    std::fs::remove_dir_all(&out).unwrap();
}

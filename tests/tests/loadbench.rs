//! The load benchmark's quick mode: every scenario briefly (each filter
//! checked on real packets against the reference matcher before it is
//! timed; established flows checked to be established), and its JSON,
//! Markdown and plot written. No timing is asserted.

use std::process::Command;

use sg_tests::require_root;

#[test]
fn quick_mode_runs_every_scenario() {
    require_root!();
    let out = std::env::temp_dir().join(format!("sg-loadbench-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_sg-loadbench"))
        .arg("--quick")
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

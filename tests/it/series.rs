//! Series completion and routing: when received series become jobs.

use std::time::Duration;

use diesel::prelude::*;
use kneenode::config::RoutingRule;
use kneenode::db::schema::{jobs, series};
use kneenode::pipeline::JobOptions;

use crate::peers::*;

#[test]
fn series_in_two_associations_makes_one_job_and_a_late_instance_makes_revision_2() {
    let node = Node::start_with(|cfg| {
        cfg.series.quiet_seconds = 2;
        cfg.routing = vec![RoutingRule {
            name: "knees".into(),
            match_rule: kneenode::config::RuleMatch {
                modality: Some("MR".into()),
                ..Default::default()
            },
            options: JobOptions {
                perform_nsm: false,
                ..Default::default()
            },
            destinations: vec![],
            fallback: false,
        }];
    });
    let work = tempfile::tempdir().unwrap();
    // 81 slices announced (Images in Acquisition); 80 sent in two associations, the last one late.
    let files = mr_series(work.path(), 81, 32);
    let jobs_now = || -> Vec<(i32, String, String)> {
        jobs::table
            .select((jobs::revision, jobs::options, jobs::input_path))
            .order(jobs::revision)
            .load(&mut *node.db.conn().unwrap())
            .unwrap()
    };
    let series_row = || -> (i32, i32, String) {
        series::table
            .select((series::instance_count, series::revision, series::status))
            .first(&mut *node.db.conn().unwrap())
            .unwrap()
    };
    assert!(storescu(node.addr, "SCANNER", &[], &files[..40])
        .status
        .success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(storescu(node.addr, "SCANNER", &[], &files[40..80])
        .status
        .success());
    assert!(
        jobs_now().is_empty(),
        "not complete before the quiet period: 80 of 81 announced"
    );
    let jobs1 = wait_for("the revision-1 job", Duration::from_secs(10), || {
        let j = jobs_now();
        (!j.is_empty()).then_some(j)
    });
    assert_eq!(jobs1.len(), 1);
    assert_eq!(series_row(), (80, 1, "routed".to_owned()));
    assert!(
        jobs1[0].1.contains("\"perform_nsm\":false"),
        "the rule's options: {}",
        jobs1[0].1
    );
    assert!(
        jobs1[0].2.ends_with(&files_series_uid(&files[0])),
        "input is the series folder"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jobs_now().len(), 1, "processed once");

    // The late instance re-opens the series; with all 81 announced instances the release completes it.
    assert!(storescu(node.addr, "SCANNER", &[], &files[80..])
        .status
        .success());
    let jobs2 = wait_for("the revision-2 job", Duration::from_secs(10), || {
        let j = jobs_now();
        (j.len() == 2).then_some(j)
    });
    assert_eq!(jobs2.iter().map(|j| j.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(series_row(), (81, 2, "routed".to_owned()));
}

#[test]
fn series_that_no_rule_matches_is_kept_but_not_processed() {
    let node = Node::start_with(|cfg| cfg.series.quiet_seconds = 1);
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(work.path(), 4, 16);
    assert!(storescu(node.addr, "SCANNER", &[], &files).status.success());
    let status = wait_for("completion", Duration::from_secs(10), || {
        let s: String = series::table
            .select(series::status)
            .first(&mut *node.db.conn().unwrap())
            .ok()?;
        (s != "receiving").then_some(s)
    });
    assert_eq!(status, "unrouted");
    let n: i64 = jobs::table
        .count()
        .get_result(&mut *node.db.conn().unwrap())
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(node.instance_rows().len(), 4, "the instances are kept");
}

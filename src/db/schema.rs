//! The diesel schema, shared by both backends. Keep it in step with `migrations/postgres` and
//! `migrations/sqlite`; every type here must be one the multi-backend connection supports.

#![expect(missing_docs, reason = "table! generates items without docs")]

diesel::table! {
    instances (id) {
        id -> BigInt,
        sop_instance_uid -> Text,
        sop_class_uid -> Text,
        study_instance_uid -> Text,
        series_instance_uid -> Text,
        transfer_syntax_uid -> Text,
        revision -> Integer,
        path -> Text,
        size_bytes -> BigInt,
        content_hash -> Text,
        calling_ae -> Text,
        called_ae -> Text,
        peer -> Text,
        association_id -> Text,
        received_at -> Timestamp,
    }
}

diesel::table! {
    series (id) {
        id -> BigInt,
        series_instance_uid -> Text,
        study_instance_uid -> Text,
        modality -> Nullable<Text>,
        body_part -> Nullable<Text>,
        series_description -> Nullable<Text>,
        protocol_name -> Nullable<Text>,
        calling_ae -> Text,
        called_ae -> Text,
        instance_count -> Integer,
        expected_count -> Nullable<Integer>,
        revision -> Integer,
        status -> Text,
        rule_name -> Nullable<Text>,
        first_received_at -> Timestamp,
        last_received_at -> Timestamp,
        completed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        revision -> Integer,
        source -> Text,
        study_instance_uid -> Nullable<Text>,
        series_instance_uid -> Nullable<Text>,
        input_path -> Text,
        options -> Text,
        dedup_key -> Nullable<Text>,
        status -> Text,
        priority -> Integer,
        attempts -> Integer,
        max_attempts -> Integer,
        run_after -> Timestamp,
        worker_id -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamp>,
        heartbeat_at -> Nullable<Timestamp>,
        cancel_requested -> Bool,
        current_step -> Integer,
        total_steps -> Integer,
        step_name -> Nullable<Text>,
        progress_percent -> Double,
        created_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        completed_at -> Nullable<Timestamp>,
        result_path -> Nullable<Text>,
        result_size_bytes -> Nullable<BigInt>,
        error_code -> Nullable<Text>,
        error_message -> Nullable<Text>,
        peak_rss_bytes -> Nullable<BigInt>,
        peak_gpu_bytes -> Nullable<BigInt>,
        stage_seconds -> Nullable<Text>,
    }
}

diesel::table! {
    dispatches (id) {
        id -> BigInt,
        job_id -> Text,
        destination -> Text,
        ae_title -> Text,
        host -> Text,
        port -> Integer,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        files -> Text,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        created_at -> Timestamp,
        last_login_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    audit_events (id) {
        id -> BigInt,
        at -> Timestamp,
        kind -> Text,
        actor -> Text,
        action -> Text,
        outcome -> Text,
        detail -> Text,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> BigInt,
        csrf_token -> Text,
        peer -> Text,
        created_at -> Timestamp,
        last_seen_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        device -> Text,
        host -> Text,
        pid -> Integer,
        version -> Text,
        started_at -> Timestamp,
        last_seen_at -> Timestamp,
        current_job_id -> Nullable<Text>,
        stopped_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(dispatches -> jobs (job_id));
diesel::joinable!(sessions -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    instances,
    series,
    jobs,
    dispatches,
    users,
    audit_events,
    sessions,
    workers,
);

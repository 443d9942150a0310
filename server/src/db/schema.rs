// Written to match migrations/postgres (what `diesel print-schema` prints for it).
// SQLite uses the same column types: its INTEGER PRIMARY KEY is a 64-bit rowid, read as Int8.

diesel::table! {
    builder_keys (id) {
        id -> Int8,
        builder_id -> Int8,
        fingerprint -> Text,
        public_key -> Text,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    builder_project_requests (builder_id, project_id) {
        builder_id -> Int8,
        project_id -> Int8,
        requested_at -> Timestamp,
    }
}

diesel::table! {
    builder_projects (builder_id, project_id) {
        builder_id -> Int8,
        project_id -> Int8,
    }
}

diesel::table! {
    builders (id) {
        id -> Int8,
        name -> Text,
        status -> Text,
        owner -> Nullable<Text>,
        description -> Nullable<Text>,
        properties -> Text,
        created_at -> Timestamp,
        last_report_at -> Nullable<Timestamp>,
        registered_from -> Nullable<Text>,
        agreed -> Int8,
        disputed -> Int8,
    }
}

diesel::table! {
    build_requests (id) {
        id -> Int8,
        project_id -> Int8,
        branch -> Text,
        revision -> Nullable<Text>,
        builders -> Int4,
        requires -> Text,
        deadline -> Nullable<Timestamp>,
        state -> Text,
        reason -> Nullable<Text>,
        digest -> Nullable<Text>,
        body -> Nullable<Text>,
        signature -> Nullable<Text>,
        requested_by -> Text,
        created_at -> Timestamp,
        closed_at -> Nullable<Timestamp>,
        quorum -> Nullable<Int4>,
        distinct_by -> Text,
        extra_slots -> Int4,
        spot_check -> Bool,
        verdict -> Nullable<Text>,
    }
}

diesel::table! {
    builds (id) {
        id -> Int8,
        project_id -> Int8,
        builder_id -> Int8,
        uuid -> Text,
        branch -> Text,
        revision -> Text,
        state -> Text,
        result -> Nullable<Text>,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        reporter -> Text,
        properties -> Text,
        received_at -> Timestamp,
        recipe_version -> Nullable<Int8>,
        recipe_key -> Nullable<Text>,
        sandbox -> Nullable<Text>,
        agreement -> Nullable<Text>,
        artifacts -> Nullable<Text>,
    }
}

diesel::table! {
    heads (project_id, builder_id, branch) {
        project_id -> Int8,
        builder_id -> Int8,
        branch -> Text,
        build_id -> Int8,
        started_at -> Timestamp,
    }
}

diesel::table! {
    leases (id) {
        id -> Int8,
        request_id -> Int8,
        builder_id -> Int8,
        state -> Text,
        granted_at -> Timestamp,
        expires_at -> Timestamp,
        build_id -> Nullable<Int8>,
        ended_at -> Nullable<Timestamp>,
        reason -> Nullable<Text>,
        agrees -> Nullable<Bool>,
    }
}

diesel::table! {
    logs (digest) {
        digest -> Text,
        size -> Int8,
        compressed -> Bytea,
    }
}

diesel::table! {
    projects (id) {
        id -> Int8,
        name -> Text,
        title -> Text,
        repo_url -> Nullable<Text>,
        revision_url -> Nullable<Text>,
        created_at -> Timestamp,
        compare_url -> Nullable<Text>,
    }
}

diesel::table! {
    project_capabilities (project_id, name) {
        project_id -> Int8,
        name -> Text,
        description -> Text,
    }
}

diesel::table! {
    project_keys (id) {
        id -> Int8,
        project_id -> Int8,
        fingerprint -> Text,
        public_key -> Text,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    lease_nonces (builder_id, nonce) {
        builder_id -> Int8,
        nonce -> Text,
        seen_at -> Timestamp,
    }
}

diesel::table! {
    key_lists (id) {
        id -> Int8,
        project_id -> Int8,
        version -> Int8,
        body -> Bytea,
        signature -> Text,
        digest -> Text,
        key_fingerprint -> Text,
        expires_at -> Timestamp,
        published_at -> Timestamp,
    }
}

diesel::table! {
    recipes (id) {
        id -> Int8,
        project_id -> Int8,
        version -> Int8,
        body -> Bytea,
        signature -> Text,
        digest -> Text,
        key_fingerprint -> Text,
        expires_at -> Timestamp,
        published_at -> Timestamp,
    }
}

diesel::table! {
    reports (digest) {
        digest -> Text,
        build_id -> Int8,
        received_at -> Timestamp,
    }
}

diesel::table! {
    steps (id) {
        id -> Int8,
        build_id -> Int8,
        position -> Int4,
        name -> Text,
        kind -> Nullable<Text>,
        result -> Text,
        started_at -> Timestamp,
        finished_at -> Timestamp,
        exit_code -> Nullable<Int4>,
        log_digest -> Nullable<Text>,
        log_truncated -> Bool,
    }
}

diesel::table! {
    test_results (id) {
        id -> Int8,
        build_id -> Int8,
        suite -> Text,
        name -> Text,
        result -> Text,
        duration_ms -> Nullable<Int8>,
        message -> Nullable<Text>,
        since_build_id -> Nullable<Int8>,
        flaky -> Bool,
        history -> Nullable<Int8>,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Int8,
        notification_id -> Int8,
        subscription_id -> Int8,
        uid -> Text,
        state -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamp,
        last_attempt_at -> Nullable<Timestamp>,
        last_answer -> Nullable<Text>,
        created_at -> Timestamp,
        done_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    notifications (id) {
        id -> Int8,
        project_id -> Int8,
        event_key -> Text,
        event -> Text,
        builder_id -> Nullable<Int8>,
        branch -> Nullable<Text>,
        build_id -> Nullable<Int8>,
        facts -> Text,
        created_at -> Timestamp,
        revision -> Nullable<Text>,
    }
}

diesel::table! {
    subscriptions (id) {
        id -> Int8,
        project_id -> Int8,
        builder_id -> Nullable<Int8>,
        branch -> Nullable<Text>,
        kind -> Text,
        target -> Text,
        secret -> Nullable<Text>,
        created_at -> Timestamp,
        failing_since -> Nullable<Timestamp>,
        allow_private -> Bool,
        forge -> Nullable<Text>,
        repo -> Nullable<Text>,
        context -> Nullable<Text>,
    }
}

diesel::joinable!(builder_keys -> builders (builder_id));
diesel::joinable!(builder_project_requests -> builders (builder_id));
diesel::joinable!(builder_project_requests -> projects (project_id));
diesel::joinable!(builder_projects -> builders (builder_id));
diesel::joinable!(builder_projects -> projects (project_id));
diesel::joinable!(build_requests -> projects (project_id));
diesel::joinable!(builds -> builders (builder_id));
diesel::joinable!(builds -> projects (project_id));
diesel::joinable!(heads -> builds (build_id));
diesel::joinable!(leases -> build_requests (request_id));
diesel::joinable!(leases -> builders (builder_id));
diesel::joinable!(leases -> builds (build_id));
diesel::joinable!(project_capabilities -> projects (project_id));
diesel::joinable!(key_lists -> projects (project_id));
diesel::joinable!(lease_nonces -> builders (builder_id));
diesel::joinable!(project_keys -> projects (project_id));
diesel::joinable!(recipes -> projects (project_id));
diesel::joinable!(reports -> builds (build_id));
diesel::joinable!(steps -> builds (build_id));
diesel::joinable!(steps -> logs (log_digest));
diesel::joinable!(test_results -> builds (build_id));
diesel::joinable!(deliveries -> notifications (notification_id));
diesel::joinable!(deliveries -> subscriptions (subscription_id));
diesel::joinable!(notifications -> projects (project_id));
diesel::joinable!(subscriptions -> projects (project_id));

diesel::allow_tables_to_appear_in_same_query!(
    builder_keys,
    builder_project_requests,
    builder_projects,
    build_requests,
    builders,
    builds,
    deliveries,
    heads,
    leases,
    logs,
    notifications,
    project_capabilities,
    key_lists,
    lease_nonces,
    project_keys,
    projects,
    recipes,
    reports,
    steps,
    subscriptions,
    test_results,
);

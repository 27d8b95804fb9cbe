// Every command the UI may call is listed here and granted to the main
// window in src-tauri/capabilities/; nothing more.
const COMMANDS: &[&str] = &[
    "status",
    "settings",
    "sign_in",
    "sign_out",
    "list_notes",
    "get_note",
    "save_note",
    "delete_note",
    "sync_now",
    "set_work_offline",
    "search_notes",
    "list_trash",
    "restore_from_trash",
    "empty_trash",
    "note_history",
    "export_all",
    "cancel_export",
    "device_name",
    "set_device_name",
    "switch_account",
    "list_sessions",
    "revoke_session",
    "revoke_other_sessions",
    "change_password",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .capabilities_path_pattern("src-tauri/capabilities/**/*")
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri build script failed");
}

//! The commands of the Account panel: this device's name, the accounts
//! signed in on it and the switch between them, the account's signed-in
//! devices, and the password. No token, session secret or password hash
//! ever comes back; passwords arrive as [`SecretString`]s and are zeroed
//! when dropped.

use latchkey_client::{ExposeSecret, SecretString, SessionSummary, Status};
use tauri::State;

use crate::error::Result;
use crate::state::AppState;

/// The name this device signs in with.
#[tauri::command]
pub async fn device_name(state: State<'_, AppState>) -> Result<String> {
    Ok(state.engine.device_name())
}

/// Names this device for the next sign-in (blank: the host name again);
/// returns the name it will use.
#[tauri::command]
pub async fn set_device_name(state: State<'_, AppState>, name: String) -> Result<String> {
    state.engine.set_device_name(Some(&name)).await?;
    Ok(state.engine.device_name())
}

/// Makes another account signed in on this device the active one.
#[tauri::command]
pub async fn switch_account(
    state: State<'_, AppState>,
    server: String,
    username: String,
) -> Result<Status> {
    Ok(state.engine.switch_account(&server, &username).await?)
}

/// The devices signed in to the active account, most recently seen first.
#[tauri::command]
pub async fn list_sessions(state: State<'_, AppState>) -> Result<Vec<SessionSummary>> {
    Ok(state.engine.list_sessions().await?)
}

/// Signs another device out.
#[tauri::command]
pub async fn revoke_session(state: State<'_, AppState>, session_id: String) -> Result<()> {
    Ok(state.engine.revoke_session(&session_id).await?)
}

/// Signs every other device out; returns how many.
#[tauri::command]
pub async fn revoke_other_sessions(state: State<'_, AppState>) -> Result<u64> {
    Ok(state.engine.revoke_other_sessions().await?)
}

/// Changes the password; every other device is signed out (how many is
/// returned), this one stays.
#[tauri::command]
pub async fn change_password(
    state: State<'_, AppState>,
    current: SecretString,
    new: SecretString,
) -> Result<u64> {
    Ok(state
        .engine
        .change_password(current.expose_secret(), new.expose_secret())
        .await?)
}

//! Scanning: verify a code, record the scan and catch cloned labels; check
//! a scan's auth token; list a cylinder's scans; and the incident response
//! of staff (tamper flag, code reissue).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::scan_token;
use crate::domain::Role;
use crate::domain::access::Action;
use crate::domain::codes::{CylinderCodes, auth_hash};
use crate::domain::scan::{Coordinates, ScanCode, ScanResult, ScanType};
use crate::domain::value::{Address, Notes};
use crate::http::AppState;
use crate::http::client::Client;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiQuery, CurrentUser, JsonBody, PathId, TokenUser, active_user};
use crate::http::quota;
use crate::storage::{
    Actor, CodeReissue, RecordedScan, ScanDraft, ScanInput, ScanOutcome, ScanRecord, Scope,
    TamperFlagOutcome,
};

use super::cylinders::{CylinderView, PageQuery, page_request};

/// Device clocks may run this far ahead of the server's.
const CLOCK_SKEW: Duration = Duration::minutes(2);
/// Oldest event time accepted: a phone that was offline longer than this
/// has its scans rejected instead of rewriting old history.
const MAX_SCAN_AGE: Duration = Duration::days(30);
/// Maximum length of a stored user agent, in characters.
const MAX_USER_AGENT_CHARS: usize = 300;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// The QR code text or RFID tag id as the scanner read it. Surrounding
    /// whitespace and CR/LF are ignored; RFID hex is case-insensitive.
    pub code: String,
    pub scan_type: ScanType,
    /// Degrees, -90 to 90; with `longitude`. 0,0 counts as no location.
    pub latitude: Option<f64>,
    /// Degrees, -180 to 180; with `latitude`.
    pub longitude: Option<f64>,
    /// Radius of the fix in metres.
    pub accuracy_m: Option<f64>,
    /// Free-text place, up to 300 characters.
    pub address: Option<String>,
    /// When the scan happened, for scans uploaded later; at most 2 minutes
    /// ahead of the server's clock and 30 days behind it.
    pub scanned_at: Option<DateTime<Utc>>,
    /// A retry with the same id returns the first response and records
    /// nothing new. 1 to 100 characters of A-Z, a-z, 0-9, '.', '_', ':', '-'.
    pub client_scan_id: Option<String>,
}

/// The verdict on a scan.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScanResponse {
    pub scan_id: Uuid,
    pub result: ScanResult,
    /// A sentence telling the scanner what to do.
    pub message: String,
    /// The cylinder, as far as the scanner's role may see it; absent for
    /// FAILED.
    pub cylinder: Option<CylinderView>,
    pub is_suspicious: bool,
    pub suspicious_reason: Option<String>,
    pub warnings: Vec<String>,
    pub scanned_at: DateTime<Utc>,
    /// Proof of a VALID verification for a few minutes; check it with
    /// `POST /api/v1/scans/verify-token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyTokenRequest {
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyTokenResponse {
    /// True when the token is genuine and unexpired.
    pub valid: bool,
    /// The reason the token is not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cylinder_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

fn parse_client_scan_id(raw: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:-".contains(c);
    if raw.is_empty() || raw.len() > 100 || !raw.chars().all(allowed) {
        return Err(ApiError::invalid(
            "client_scan_id",
            "must be 1 to 100 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
        ));
    }
    Ok(Some(raw))
}

fn parse_scanned_at(
    raw: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    let Some(at) = raw else {
        return Ok(now);
    };
    if at > now + CLOCK_SKEW {
        return Err(ApiError::invalid(
            "scanned_at",
            "is in the future; check the device's clock",
        ));
    }
    if at < now - MAX_SCAN_AGE {
        return Err(ApiError::invalid(
            "scanned_at",
            format!("is more than {} days ago", MAX_SCAN_AGE.num_days()),
        ));
    }
    Ok(at)
}

/// Returns the user agent header without control characters, shortened.
fn user_agent(headers: &HeaderMap) -> Option<String> {
    let text = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT_CHARS)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Builds the stored response of a new scan for a scanner of `role`.
fn draft_response(draft: &ScanDraft<'_>, role: Role) -> ScanResponse {
    ScanResponse {
        scan_id: draft.scan_id,
        result: draft.verdict.result,
        message: draft.verdict.message.clone(),
        cylinder: draft.cylinder.map(|record| {
            CylinderView::for_role(record.clone(), role, draft.scanned_at.date_naive())
        }),
        is_suspicious: draft.suspicious_reason.is_some(),
        suspicious_reason: draft.suspicious_reason.map(str::to_string),
        warnings: draft.verdict.warnings.clone(),
        scanned_at: draft.scanned_at,
        auth_token: None,
        auth_token_expires_at: None,
    }
}

/// Returns the stored response of `scan` as the body to send, with the
/// auth token added when the scan was VALID. The token is computed again,
/// not stored, and is the same on every retry.
fn with_token(state: &AppState, scan: &RecordedScan) -> Result<String, ApiError> {
    let token_fields = match (scan.result, &scan.token_key, scan.cylinder_id) {
        (ScanResult::Valid, Some(secret), Some(cylinder_id)) => {
            let token = scan_token::issue(secret, scan.id, cylinder_id, scan.received_at);
            let lifetime = Duration::seconds(state.config.scan_token_lifetime.as_secs() as i64);
            let issued = DateTime::from_timestamp(scan.received_at.timestamp(), 0)
                .unwrap_or(scan.received_at);
            Some((token, issued + lifetime))
        }
        _ => None,
    };
    let Some((token, expires_at)) = token_fields else {
        return Ok(scan.response.clone());
    };
    append_token(&scan.response, &token, expires_at).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "stored response of scan {} is not a JSON object",
            scan.id
        ))
    })
}

/// Appends `auth_token` and `auth_token_expires_at` to `stored`, a JSON
/// object written by [`draft_response`], which never has these fields.
/// Appending to the text saves parsing the object into a tree and writing
/// it out again, on every VALID scan.
fn append_token(stored: &str, token: &str, expires_at: DateTime<Utc>) -> Option<String> {
    let fields = stored.strip_prefix('{')?.strip_suffix('}')?;
    let token = serde_json::to_string(token).ok()?;
    let expires_at = serde_json::to_string(&expires_at).ok()?;
    let mut body = String::with_capacity(stored.len() + token.len() + expires_at.len() + 40);
    body.push('{');
    body.push_str(fields);
    if !fields.trim().is_empty() {
        body.push(',');
    }
    body.push_str("\"auth_token\":");
    body.push_str(&token);
    body.push_str(",\"auth_token_expires_at\":");
    body.push_str(&expires_at);
    body.push('}');
    Some(body)
}

/// Builds a scan's response from a JSON body already written as text.
fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[utoipa::path(
    post, path = "/api/v1/scans", tag = "scans",
    request_body = ScanRequest,
    responses(
        (status = 201, description = "The scan was verified and recorded", body = ScanResponse),
        (status = 200, description = "A retry of an earlier scan with the same client_scan_id: its first response", body = ScanResponse),
        (status = 401, description = "Missing or invalid access token, or its user is no longer active with the role the token names; nothing was recorded", body = ErrorBody),
        (status = 422, description = "A field is invalid, such as a code with characters no label carries", body = ErrorBody),
        (status = 429, description = "Over the caller's hourly scan or API limit; nothing was recorded. Retry-After gives the wait", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn scan(
    State(state): State<AppState>,
    caller: TokenUser,
    client: Client,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let grant = caller.grant(Action::ScanCylinder, "scan cylinders")?;
    let request: ScanRequest = body.decode()?;
    let now = Utc::now();
    let code = ScanCode::parse("code", &request.code, request.scan_type).inspect_err(|error| {
        // Unreadable input is logged for support, never counted as a
        // counterfeit. Debug formatting escapes control characters.
        let shown: String = request.code.chars().take(80).collect();
        tracing::warn!(scanner_id = %grant.actor().user_id, code = ?shown, rule = %error.rule, "scan rejected: invalid code");
    })?;
    let position = Coordinates::parse(request.latitude, request.longitude, request.accuracy_m)?;
    let address = request
        .address
        .as_deref()
        .map(|text| Address::parse("address", text))
        .transpose()?;
    let scanned_at = parse_scanned_at(request.scanned_at, now)?;
    let client_scan_id = parse_client_scan_id(request.client_scan_id)?;

    // A retry with a client scan id that was seen before is not looked up
    // first: the insert meets the unique constraint, and the store returns
    // the first scan. That keeps a round trip off every new scan.
    let raw_code: String = request.code.chars().take(100).collect();
    let input = ScanInput {
        // Time-ordered, so that new scans append to the primary-key index
        // instead of touching a random page of it.
        id: Uuid::now_v7(),
        scanner: grant.actor(),
        scan_type: request.scan_type,
        code: code.as_str().to_string(),
        raw_code: raw_code.clone(),
        position,
        address: address
            .map(Address::into_inner)
            .filter(|text| !text.is_empty()),
        ip_address: Some(client.ip.to_string()),
        user_agent: user_agent(&headers),
        scanned_at,
        received_at: now,
        client_scan_id,
    };

    // Replays of a client scan id do not count against the scan limit.
    // A full bucket costs a look-up to confirm the caller, which the store
    // does not see on this path, and one to tell a replay from a new scan.
    let scanner = grant.actor();
    let scans = quota::scan_bucket(&state, scanner);
    if let Err(wait) = state.limiter.acquire(std::slice::from_ref(&scans)).await {
        confirm_scanner(&state, scanner).await?;
        let replay = match input.client_scan_id.as_deref() {
            Some(id) => state.store.scan_by_client_id(scanner.user_id, id).await?,
            None => None,
        };
        match replay {
            Some(first) => return replayed(&state, first, &raw_code),
            None => {
                // The refused scan does not count as an API call either.
                state
                    .limiter
                    .release(&quota::api_bucket(&state, scanner))
                    .await;
                tracing::warn!(user_id = %scanner.user_id, "rate limit reached: scans");
                return Err(quota::limited("scans", wait));
            }
        }
    }

    let role = scanner.role;
    let respond = move |draft: &ScanDraft<'_>| {
        serde_json::to_string(&draft_response(draft, role)).unwrap_or_else(|_| "{}".to_string())
    };
    let outcome = state
        .store
        .record_scan(input, &state.config.tamper, &respond)
        .await?;

    let scan = match outcome {
        ScanOutcome::Recorded(scan) => scan,
        ScanOutcome::Replayed(first) => {
            state.limiter.release(&scans).await;
            return replayed(&state, first, &raw_code);
        }
        ScanOutcome::ScannerRejected => {
            tracing::warn!(user_id = %scanner.user_id, role = scanner.role.as_str(), "scan rejected: the scanner is inactive or has another role now");
            return Err(ApiError::InvalidToken);
        }
    };
    if scan.is_suspicious {
        tracing::warn!(scan_id = %scan.id, cylinder_id = ?scan.cylinder_id, "security: suspicious scan, cylinder flagged as tampered");
    }
    tracing::info!(scan_id = %scan.id, result = scan.result.as_str(), "scan recorded");
    Ok(json_response(
        StatusCode::CREATED,
        with_token(&state, &scan)?,
    ))
}

/// Rejects the token of `scanner` unless the account is active with the
/// token's role.
async fn confirm_scanner(state: &AppState, scanner: Actor) -> Result<(), ApiError> {
    let user = active_user(state, scanner.user_id).await?;
    if user.role != scanner.role {
        return Err(ApiError::InvalidToken);
    }
    Ok(())
}

/// Returns, for a retry, the response of the first scan under its client
/// scan id, or 409 when that scan was of another code.
fn replayed(state: &AppState, first: RecordedScan, raw_code: &str) -> Result<Response, ApiError> {
    if first.scanned_code != raw_code {
        return Err(ApiError::Conflict {
            code: "client_scan_id_reused",
            message: "this client_scan_id was already used for a scan of another code; \
                      give every scan its own id"
                .into(),
            field: Some("client_scan_id"),
        });
    }
    Ok(json_response(StatusCode::OK, with_token(state, &first)?))
}

#[utoipa::path(
    post, path = "/api/v1/scans/verify-token", tag = "scans",
    request_body = VerifyTokenRequest,
    responses(
        (status = 200, description = "Whether the token is genuine and unexpired", body = VerifyTokenResponse),
        (status = 422, description = "The token is empty or too long", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn verify_token(
    State(state): State<AppState>,
    current: CurrentUser,
    body: JsonBody,
) -> Result<Json<VerifyTokenResponse>, ApiError> {
    current.grant(Action::ScanCylinder, "verify scan tokens")?;
    let request: VerifyTokenRequest = body.decode()?;
    if request.token.trim().is_empty() {
        return Err(ApiError::invalid("token", "must not be empty"));
    }
    if request.token.len() > scan_token::MAX_TOKEN_BYTES {
        return Err(ApiError::invalid(
            "token",
            format!("must be at most {} bytes", scan_token::MAX_TOKEN_BYTES),
        ));
    }
    let invalid = |reason| {
        Json(VerifyTokenResponse {
            valid: false,
            reason: Some(reason),
            scan_id: None,
            cylinder_id: None,
            expires_at: None,
        })
    };

    let Some(parsed) = scan_token::parse(&request.token) else {
        return Ok(invalid("malformed"));
    };
    let scan = state.store.scan_for_token(parsed.scan_id).await?;
    let authentic = scan.as_ref().and_then(|scan| {
        let (secret, cylinder_id) = (scan.token_key.as_ref()?, scan.cylinder_id?);
        (scan.result == ScanResult::Valid && scan_token::is_authentic(&parsed, secret, cylinder_id))
            .then_some(cylinder_id)
    });
    let Some(cylinder_id) = authentic else {
        return Ok(invalid("not genuine"));
    };
    // A token proves the verification at the time of its scan; a cylinder
    // flagged since then must not pass on that proof.
    if scan.as_ref().is_some_and(|scan| scan.cylinder_flagged) {
        return Ok(invalid("cylinder flagged as tampered since"));
    }
    let expires_at =
        parsed.issued_at + Duration::seconds(state.config.scan_token_lifetime.as_secs() as i64);
    if Utc::now() >= expires_at {
        return Ok(invalid("expired"));
    }
    Ok(Json(VerifyTokenResponse {
        valid: true,
        reason: None,
        scan_id: Some(parsed.scan_id),
        cylinder_id: Some(cylinder_id),
        expires_at: Some(expires_at),
    }))
}

/// One scan of a cylinder. Staff get every field. A customer or driver gets
/// the place and the scanner only for their own scans, and never the
/// network details.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScanView {
    pub id: Uuid,
    pub scan_type: ScanType,
    pub result: ScanResult,
    pub verification_message: String,
    pub is_suspicious: bool,
    pub suspicious_reason: Option<String>,
    pub scanner_role: Role,
    pub scanned_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanner_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Staff only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Staff only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_scan_id: Option<String>,
}

impl ScanView {
    fn for_viewer(record: ScanRecord, viewer: &CurrentUser) -> Self {
        let staff = viewer.user.role.is_staff();
        let own = record.scanner_id == viewer.user.id;
        let sees_place = staff || own;
        Self {
            id: record.id,
            scan_type: record.scan_type,
            result: record.result,
            verification_message: record.verification_message,
            is_suspicious: record.is_suspicious,
            suspicious_reason: record.suspicious_reason,
            scanner_role: record.scanner_role,
            scanned_at: record.scanned_at,
            received_at: record.received_at,
            scanned_code: staff.then_some(record.scanned_code),
            scanner_id: sees_place.then_some(record.scanner_id),
            latitude: record.latitude.filter(|_| sees_place),
            longitude: record.longitude.filter(|_| sees_place),
            accuracy_m: record.accuracy_m.filter(|_| sees_place),
            address: record.address.filter(|_| sees_place),
            ip_address: record.ip_address.filter(|_| staff),
            user_agent: record.user_agent.filter(|_| staff),
            client_scan_id: record.client_scan_id.filter(|_| sees_place),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScanPage {
    pub items: Vec<ScanView>,
    pub page: u32,
    pub per_page: u32,
    pub has_more: bool,
}

#[utoipa::path(
    get, path = "/api/v1/cylinders/{id}/scans", tag = "scans",
    params(("id" = Uuid, Path, description = "Cylinder id"), PageQuery),
    responses(
        (status = 200, description = "Scans, newest event first", body = ScanPage),
        (status = 404, description = "No such cylinder, or not one of the caller's own", body = ErrorBody),
        (status = 422, description = "A query parameter is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cylinder_scans(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ScanPage>, ApiError> {
    let grant = current.grant(Action::ViewHistory, "view cylinder scans")?;
    let page = page_request(query.page.as_deref(), query.per_page.as_deref())?;
    state
        .store
        .cylinder(id, grant.scope())
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;

    let found = state.store.cylinder_scans(id, page).await?;
    Ok(Json(ScanPage {
        items: found
            .items
            .into_iter()
            .map(|record| ScanView::for_viewer(record, &current))
            .collect(),
        page: found.page,
        per_page: found.per_page,
        has_more: found.has_more,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TamperRequest {
    /// True to flag the cylinder, false to clear the flag.
    pub is_tampered: bool,
    /// Notes on the finding, 1 to 1,000 characters, required both to set and
    /// to clear the flag.
    pub notes: String,
}

#[utoipa::path(
    post, path = "/api/v1/cylinders/{id}/tamper", tag = "scans",
    params(("id" = Uuid, Path, description = "Cylinder id")),
    request_body = TamperRequest,
    responses(
        (status = 200, description = "The cylinder with its new flag", body = CylinderView),
        (status = 403, description = "Only dispatchers and admins", body = ErrorBody),
        (status = 404, description = "No such cylinder", body = ErrorBody),
        (status = 409, description = "The flag already has this value", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(cylinder_id = %id))]
pub async fn set_tamper_flag(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    body: JsonBody,
) -> Result<Json<CylinderView>, ApiError> {
    let grant = current.grant(Action::InvestigateIncidents, "set or clear tamper flags")?;
    let request: TamperRequest = body.decode()?;
    let notes = Notes::parse("notes", &request.notes)?;
    if notes.as_str().is_empty() {
        return Err(ApiError::invalid(
            "notes",
            "must not be empty: say what was found",
        ));
    }

    let outcome = state
        .store
        .set_tamper_flag(
            id,
            request.is_tampered,
            notes.into_inner(),
            grant.actor(),
            Utc::now(),
        )
        .await?;
    match outcome {
        TamperFlagOutcome::Changed(record) => {
            tracing::warn!(
                flagged = request.is_tampered,
                "security: tamper flag changed by hand"
            );
            Ok(Json(CylinderView::for_role(
                record,
                current.user.role,
                Utc::now().date_naive(),
            )))
        }
        TamperFlagOutcome::Unchanged(_) => Err(ApiError::Conflict {
            code: "tamper_flag_unchanged",
            message: format!(
                "the cylinder is already {}",
                if request.is_tampered {
                    "flagged as tampered"
                } else {
                    "not flagged"
                }
            ),
            field: Some("is_tampered"),
        }),
        TamperFlagOutcome::NotFound => Err(ApiError::NotFound("cylinder")),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReissueRequest {
    /// The reason for replacing the labels, 1 to 1,000 characters.
    pub reason: String,
}

#[utoipa::path(
    post, path = "/api/v1/cylinders/{id}/reissue-codes", tag = "scans",
    params(("id" = Uuid, Path, description = "Cylinder id")),
    request_body = ReissueRequest,
    responses(
        (status = 200, description = "The cylinder with its new codes; scanning an old one now gives REVOKED", body = CylinderView),
        (status = 403, description = "Only dispatchers and admins", body = ErrorBody),
        (status = 404, description = "No such cylinder", body = ErrorBody),
        (status = 409, description = "The cylinder is retired", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(cylinder_id = %id))]
pub async fn reissue_codes(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    body: JsonBody,
) -> Result<Json<CylinderView>, ApiError> {
    use secrecy::ExposeSecret;

    let grant = current.grant(Action::InvestigateIncidents, "reissue cylinder codes")?;

    let request: ReissueRequest = body.decode()?;
    let reason = Notes::parse("reason", &request.reason)?;
    if reason.as_str().is_empty() {
        return Err(ApiError::invalid("reason", "must not be empty"));
    }
    let existing = state
        .store
        .cylinder(id, Scope::All)
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;
    if existing.status == crate::domain::CylinderStatus::Retired {
        return Err(ApiError::Conflict {
            code: "cylinder_retired",
            message: "a RETIRED cylinder gets no new codes".into(),
            field: None,
        });
    }

    let codes = CylinderCodes::generate().map_err(ApiError::internal)?;
    let server_key = state.config.secret_key.expose_secret().as_bytes();
    let reissue = CodeReissue {
        cylinder_id: id,
        auth_hash: auth_hash(
            server_key,
            &existing.serial_number,
            &codes.qr_code,
            &codes.rfid_tag,
            &codes.secret_key,
        ),
        qr_code: codes.qr_code,
        rfid_tag: codes.rfid_tag,
        secret_key: codes.secret_key.to_vec(),
        reason: reason.into_inner(),
    };
    let record = state
        .store
        .reissue_codes(reissue, grant.actor(), Utc::now())
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;
    tracing::warn!("security: cylinder codes reissued; the old codes are revoked");
    Ok(Json(CylinderView::for_role(
        record,
        current.user.role,
        Utc::now().date_naive(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
    }

    #[test]
    fn appended_token_keeps_stored_fields() {
        let stored = serde_json::json!({
            "scan_id": "0190f2a4-0000-7000-8000-000000000001",
            "message": "Genuine cylinder. \"Quoted\" and \\ kept",
            "warnings": ["one", "two"],
            "cylinder": {"serial_number": "KE-1", "status": "FILLED"},
        });
        let body = append_token(&stored.to_string(), "tok\"en", expiry()).expect("an object");

        let mut expected = stored;
        expected["auth_token"] = serde_json::json!("tok\"en");
        expected["auth_token_expires_at"] = serde_json::json!(expiry());
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(parsed, expected);
    }

    #[test]
    fn token_fields_fill_empty_object() {
        let body = append_token("{}", "token", expiry()).expect("an object");
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"auth_token": "token", "auth_token_expires_at": expiry()})
        );
    }

    #[test]
    fn non_object_gets_no_token() {
        for stored in ["", "[]", "\"text\"", "{\"open\": 1"] {
            assert_eq!(append_token(stored, "token", expiry()), None, "{stored}");
        }
    }
}

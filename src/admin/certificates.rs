//! Kong's certificate endpoints beyond the generated ones: `/certificates/{id or sni}` (a
//! certificate is addressed by any of its SNI names; `PUT` by an unknown name creates both), the
//! `snis` shorthand (a certificate's names written and shown with it), `/certificates/{c}/snis`,
//! and the reference check that keeps a CA certificate a service still lists.

use actix_web::http::Method;
use actix_web::HttpResponse;
use portcullis_stores::ListFilter;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::oauth2_tokens::ParseBody;
use super::{crud, AdminState};
use crate::actors::registry::{Delete, Insert};
use crate::entities::certificates::{CERTIFICATES, SNIS};
use crate::error::AdminError;
use crate::schema::{self, Coerce, Field, FieldErrors, FieldType, Schema};

/// The endpoints this module answers; `None` hands the request to the generic dispatcher.
pub async fn dispatch(
    st: &AdminState,
    seg: &[&str],
    method: &Method,
    query: &[(String, String)],
    parse: ParseBody<'_>,
) -> Option<Result<HttpResponse, AdminError>> {
    Some(match seg {
        ["certificates"] => match *method {
            Method::GET => list(st, query).await,
            Method::POST => create(st, parse).await,
            _ => Err(AdminError::MethodNotAllowed),
        },
        ["certificates", key] => item(st, key, method, parse).await,
        ["certificates", key, "snis"] => nested(st, key, method, query, parse).await,
        ["certificates", key, "snis", name] => nested_item(st, key, name, method, parse).await,
        // Kong disables it: a certificate is reached as `/certificates/{sni}`.
        ["snis", _, "certificate"] => Err(AdminError::MethodNotAllowed),
        ["ca_certificates", key] if *method == Method::DELETE => match ca_in_use(st, key).await {
            Ok(()) => return None,
            Err(e) => Err(e),
        },
        _ => return None,
    })
}

/// A certificate's names as a write gives them: absent (unchanged), or the new list (`null` or
/// `[]` removes every name).
type Names = Option<Vec<String>>;

/// Validates the `snis` element list as Kong's schema does (each a wildcard host).
static SNIS_INPUT: std::sync::LazyLock<Schema> = std::sync::LazyLock::new(|| Schema {
    name: "certificates",
    fields: vec![
        Field::new("snis", FieldType::Array(Box::new(FieldType::String)))
            .check(crate::entities::certificates::check_wildcard_host),
    ],
    entity_checks: Vec::new(),
});

fn snis_violation(message: String) -> AdminError {
    let mut e = FieldErrors::new();
    e.insert("snis".into(), Value::String(message));
    AdminError::Schema(e)
}

/// Takes `snis` out of the input: validated, duplicates refused (Kong's text), sorted. For a
/// `PUT`, `put_name` is the SNI of `PUT /certificates/{name}` (if so addressed), which a given
/// list always includes.
fn take_names(
    input: &mut Map<String, Value>,
    coerce: Coerce,
    put: bool,
    put_name: Option<&str>,
) -> Result<Names, AdminError> {
    // Kong: a PUT without `snis` leaves the certificate without names, even the one in its URL.
    let raw = match input.remove("snis") {
        None if put => return Ok(Some(Vec::new())),
        other => other,
    };
    let mut names: Vec<String> = match raw {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(v) => {
            let mut one = Map::new();
            let v = match v {
                Value::String(s) => json!([s]),
                v => v,
            };
            one.insert("snis".into(), v);
            let valid = schema::validate(&SNIS_INPUT, &one, coerce).map_err(AdminError::Schema)?;
            valid
                .get("snis")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    if let Some(name) = put_name {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if !seen.insert(n.as_str()) {
            return Err(snis_violation(format!("{n} is duplicated")));
        }
    }
    names.sort();
    Ok(Some(names))
}

/// Kong's `check_list_is_new`: every name is free or already this certificate's.
async fn names_are_free(
    st: &AdminState,
    names: &[String],
    certificate: Option<Uuid>,
) -> Result<(), AdminError> {
    for name in names {
        let Some(row) = st.store.get_by(SNIS.def, "name", name).await? else {
            continue;
        };
        let owner = crud::fk(&row, "certificate");
        if owner != certificate || owner.is_none() {
            return Err(snis_violation(format!(
                "{name} already associated with existing certificate '{}'",
                owner.map(|o| o.to_string()).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The SNI rows of a certificate.
async fn sni_rows(
    st: &AdminState,
    certificate: Uuid,
) -> Result<Vec<Map<String, Value>>, AdminError> {
    let mut rows = Vec::new();
    let mut offset = None;
    loop {
        let filter = ListFilter {
            foreign: Some(("certificate", certificate)),
            tags: None,
            offset,
            size: 1000,
        };
        let page = st.store.list(SNIS.def, &filter).await?;
        rows.extend(page.data);
        match page.next_offset {
            Some(next) => offset = Some(next),
            None => return Ok(rows),
        }
    }
}

/// A certificate's names, sorted (Kong's `list_for_certificate`).
async fn names_of(st: &AdminState, certificate: Uuid) -> Result<Vec<String>, AdminError> {
    let mut names: Vec<String> = sni_rows(st, certificate)
        .await?
        .iter()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// Makes `names` the certificate's names: adds the missing ones, removes the others (Kong's
/// `update_list`).
async fn set_names(st: &AdminState, certificate: Uuid, names: &[String]) -> Result<(), AdminError> {
    let current = sni_rows(st, certificate).await?;
    let has = |n: &str| {
        current
            .iter()
            .any(|d| d.get("name").and_then(Value::as_str) == Some(n))
    };
    for name in names.iter().filter(|n| !has(n)) {
        let mut input = Map::new();
        input.insert("name".into(), json!(name));
        input.insert(
            "certificate".into(),
            json!({ "id": certificate.to_string() }),
        );
        let built = crud::build_doc(&SNIS, &st.plugins, input, Coerce::No, None)?;
        crud::send(
            st,
            Insert {
                def: SNIS.def,
                doc: built.doc,
            },
        )
        .await?;
    }
    for row in current {
        let name = row.get("name").and_then(Value::as_str).unwrap_or_default();
        if !names.iter().any(|n| n == name) {
            crud::send(
                st,
                Delete {
                    def: SNIS.def,
                    expected: row,
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// The certificate a path key names: its id, or the certificate of the SNI it names. An unknown
/// name is Kong's 404 "SNI not found", except for `PUT`, which creates the certificate (a new
/// id) with that name.
async fn certificate_of(
    st: &AdminState,
    key: &str,
    method: &Method,
) -> Result<(Uuid, Option<String>), AdminError> {
    if let Ok(id) = Uuid::parse_str(key) {
        return Ok((id, None));
    }
    match st.store.get_by(SNIS.def, "name", key).await? {
        Some(sni) => {
            let id = crud::fk(&sni, "certificate").ok_or(AdminError::NotFound)?;
            Ok((id, Some(key.to_string())))
        }
        None if *method == Method::PUT => Ok((Uuid::new_v4(), Some(key.to_string()))),
        None => Err(AdminError::SniNotFound),
    }
}

fn with_names(mut body: Value, names: Vec<String>) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.insert("snis".into(), json!(names));
    }
    body
}

async fn list(st: &AdminState, query: &[(String, String)]) -> Result<HttpResponse, AdminError> {
    let mut body = crud::list_page(st, &CERTIFICATES, None, query, "/certificates").await?;
    if let Some(data) = body.get_mut("data").and_then(Value::as_array_mut) {
        for cert in data {
            let id = cert
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            if let (Some(id), Some(o)) = (id, cert.as_object_mut()) {
                o.insert("snis".into(), json!(names_of(st, id).await?));
            }
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn create(st: &AdminState, parse: ParseBody<'_>) -> Result<HttpResponse, AdminError> {
    let (mut input, coerce) = parse()?;
    let names = take_names(&mut input, coerce, false, None)?;
    if let Some(names) = &names {
        names_are_free(st, names, None).await?;
    }
    let body = crud::create_value(st, &CERTIFICATES, input, coerce, None).await?;
    let names = names.unwrap_or_default();
    if let Some(id) = body
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    {
        set_names(st, id, &names).await?;
    }
    Ok(HttpResponse::Created().json(with_names(body, names)))
}

async fn item(
    st: &AdminState,
    key: &str,
    method: &Method,
    parse: ParseBody<'_>,
) -> Result<HttpResponse, AdminError> {
    let (id, name) = certificate_of(st, key, method).await?;
    match *method {
        Method::GET => {
            let doc = st
                .store
                .get(CERTIFICATES.def, id)
                .await?
                .ok_or(AdminError::NotFound)?;
            let body = crud::render(&st.plugins, &CERTIFICATES, doc);
            Ok(HttpResponse::Ok().json(with_names(body, names_of(st, id).await?)))
        }
        Method::PUT | Method::PATCH => {
            let (mut input, coerce) = parse()?;
            let put = *method == Method::PUT;
            let names = take_names(&mut input, coerce, put, name.as_deref().filter(|_| put))?;
            if let Some(names) = &names {
                names_are_free(st, names, Some(id)).await?;
            }
            let key = id.to_string();
            let body = if put {
                crud::upsert_value(st, &CERTIFICATES, key, input, coerce, None).await?
            } else {
                crud::patch_value(st, &CERTIFICATES, key, input, coerce, None).await?
            };
            let names = match names {
                Some(names) => {
                    set_names(st, id, &names).await?;
                    names
                }
                None => names_of(st, id).await?,
            };
            Ok(HttpResponse::Ok().json(with_names(body, names)))
        }
        // The certificate's SNIs go with it (their foreign key cascades).
        Method::DELETE => crud::delete(st, &CERTIFICATES, id.to_string(), None).await,
        _ => Err(AdminError::MethodNotAllowed),
    }
}

/// The certificate of a nested path, which must exist.
async fn parent(st: &AdminState, key: &str, method: &Method) -> Result<Uuid, AdminError> {
    let (id, _) = certificate_of(st, key, method).await?;
    st.store
        .get(CERTIFICATES.def, id)
        .await?
        .map(|_| id)
        .ok_or(AdminError::NotFound)
}

async fn nested(
    st: &AdminState,
    key: &str,
    method: &Method,
    query: &[(String, String)],
    parse: ParseBody<'_>,
) -> Result<HttpResponse, AdminError> {
    let id = parent(st, key, &Method::GET).await?;
    let foreign = Some(("certificate", id));
    match *method {
        Method::GET => {
            let base = format!("/certificates/{key}/snis");
            crud::list(st, &SNIS, foreign, query, &base).await
        }
        Method::POST => {
            let (input, coerce) = parse()?;
            crud::create(st, &SNIS, input, coerce, foreign).await
        }
        _ => Err(AdminError::MethodNotAllowed),
    }
}

async fn nested_item(
    st: &AdminState,
    key: &str,
    name: &str,
    method: &Method,
    parse: ParseBody<'_>,
) -> Result<HttpResponse, AdminError> {
    let id = parent(st, key, &Method::GET).await?;
    let parse = || parse();
    super::entity_item(st, &SNIS, name, method, parse, Some(("certificate", id))).await
}

/// Kong refuses to delete a CA certificate a service still lists, naming the service.
async fn ca_in_use(st: &AdminState, key: &str) -> Result<(), AdminError> {
    let Ok(id) = Uuid::parse_str(key) else {
        return Ok(());
    };
    let wanted = Value::String(id.to_string());
    let services = st.store.all(crate::entities::SERVICES.def).await?;
    let user = services.iter().find(|s| {
        s.get("ca_certificates")
            .and_then(Value::as_array)
            .is_some_and(|a| a.contains(&wanted))
    });
    match user.and_then(|s| s.get("id")).and_then(Value::as_str) {
        Some(service) => Err(AdminError::ReferencedByOthers(format!(
            "ca certificate {id} is still referenced by services (id = {service})"
        ))),
        None => Ok(()),
    }
}

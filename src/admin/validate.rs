//! Kong's dry-run validation: `POST /schemas/{entity}/validate` and `POST /schemas/plugins/validate`
//! check a body with the same rules a create applies and store nothing (Kong's
//! `kong/api/routes/kong.lua`, `validate_schema`). `deck gateway validate --online` posts every
//! entity of a file here before anything is written.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::{crud, AdminState};
use crate::error::AdminError;
use crate::schema::Coerce;

/// Validates `input` as a new row of the table `entity` (`services`, `oauth2_credentials`,
/// `plugins`, …): `200 {"message": "schema validation successful"}`, or the schema violation a
/// create would answer. Foreign keys are checked for shape only, as Kong's validation does.
///
/// # Errors
/// 404 for a table this gateway does not have; the schema violation of an invalid body.
pub fn validate(
    st: &AdminState,
    entity: &str,
    mut input: Map<String, Value>,
    coerce: Coerce,
) -> Result<HttpResponse, AdminError> {
    let kind = crud::kind_by_table(entity).ok_or(AdminError::NotFound)?;
    crud::expand_shorthands(kind, &mut input)?;
    crud::build_doc(kind, &st.plugins, input, coerce, None)?;
    Ok(HttpResponse::Ok().json(json!({ "message": "schema validation successful" })))
}

//! The OpenAPI 3 document of the admin API, generated from the handlers and their types
//! (`GET /admin/openapi.json`, unauthenticated).

use super::{
    affinity, audit, config, demand, error, identity_views, keys, model_files, model_lifecycle,
    model_registry, models, orgs, pods, registry, routing, servers, system, upstreams, usage,
    users,
};
use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "infergate admin API",
        description = "Fleet admin endpoints (pods, server pool health, session affinity, model \
registry, demand telemetry), identity endpoints (organizations, users, API keys), managed models, \
and system monitoring (host, GPUs, throughput, engines' metrics). Every path is also served under /admin/... instead of \
/api/ai/v1/admin/.... All endpoints require the ai_admin role. Errors carry the x-error and \
x-error-id headers."
    ),
    paths(
        pods::list, pods::get, pods::restart,
        servers::list,
        affinity::report, affinity::clear,
        routing::report,
        registry::get, registry::refresh,
        demand::get,
        orgs::list, orgs::lookup, orgs::create, orgs::patch, orgs::delete,
        users::list, users::lookup, users::create, users::patch, users::delete,
        keys::list, keys::create, keys::revoke,
        upstreams::get, upstreams::refresh_health,
        config::get, config::reload,
        usage::list, usage::aggregate, usage::series, usage::latency, usage::ttft, usage::export,
        audit::list, audit::export,
        model_registry::list, model_registry::add, model_registry::remove,
        models::list, models::get, models::create, models::patch, models::delete,
        model_lifecycle::start, model_lifecycle::stop, model_lifecycle::apply,
        model_lifecycle::readiness, model_lifecycle::logs, model_lifecycle::test,
        model_lifecycle::dry_run, model_lifecycle::dry_run_unsaved,
        model_files::get_base_dir, model_files::put_base_dir, model_files::local_folders, model_files::inspect_folder, model_files::hf_config,
        system::summary, system::throughput, system::gpus, system::host_summary, system::host_trends, system::capabilities,
        system::model_metrics,
    ),
    components(schemas(
        error::ErrorBody,
        pods::PodSummary, pods::PodDetail, pods::PodList, pods::RestartAccepted, pods::RestartFailed,
        servers::ServerInfo, servers::ServerList,
        affinity::ProviderAffinity, affinity::AffinityReport, affinity::ClearRequest, affinity::ClearResult,
        routing::RoutingReport, routing::ModelRouting, routing::IndexReport, routing::IndexedServer,
        registry::RegistryPage, registry::RefreshResult,
        demand::DemandInfo, demand::ModelDemandInfo,
        identity_views::OrgView, identity_views::UserView, identity_views::KeyView, identity_views::LookupItem,
        orgs::CreateOrg, orgs::PatchOrg, orgs::OrgList, orgs::OrgDeleted,
        users::CreateUser, users::PatchUser, users::UserList, users::UserDeleted,
        keys::CreateKeyBody, keys::ScopesInput, keys::KeyCreated, keys::KeyList,
        upstreams::Upstreams,
        config::RunningConfig, crate::reload::Outcome,
        audit::AuditView, audit::AuditList, crate::audit::Outcome,
        usage::RecordView, usage::RecordList, usage::Aggregate, usage::SeriesBucket, usage::Series, usage::LatencyReport,
        crate::usage::query::ModelTotals, crate::usage::query::Percentiles,
        model_registry::Route, model_registry::RouteList, model_registry::RouteBody, model_registry::RouteChange,
        models::ModelView, models::ModelList, models::ModelDeleted,
        model_files::BaseDirView, model_files::BaseDirBody, model_files::BaseDirSet, model_files::LocalFolder,
        crate::lifecycle::base_dir::BaseDirSource, crate::modelfiles::folder::FolderReport, crate::modelfiles::folder::SafetensorsSummary,
        crate::modelfiles::folder::GgufGroup, crate::modelfiles::folder::EngineRecommendation, crate::modelfiles::folder::EngineOption,
        crate::modelfiles::hfconfig::HfConfig, crate::modelfiles::hub::HubModel,
        crate::lifecycle::dry_run::DryRun, crate::lifecycle::dry_run::Warning, crate::lifecycle::dry_run::VramEstimate,
        crate::lifecycle::dry_run::Basis, crate::lifecycle::estimate::Shape, crate::lifecycle::estimate::Margins,
        crate::lifecycle::estimate::VllmEstimate, crate::lifecycle::estimate::LlamaEstimate,
        model_lifecycle::ApplyResult, crate::lifecycle::Readiness, crate::lifecycle::ReadinessStatus, crate::lifecycle::Logs,
        crate::lifecycle::TestResult, crate::lifecycle::diagnose::Finding, crate::lifecycle::diagnose::Summary,
        crate::lifecycle::ModelSpec, crate::lifecycle::ModelState, crate::lifecycle::EngineType, crate::lifecycle::Task,
        crate::lifecycle::EngineArg, crate::lifecycle::ArgType, crate::lifecycle::EnvVar,
        system::SystemSummary, system::HostSummary, system::Throughput, crate::gpu::GpuStats,
        crate::monitoring::host::HostSample, crate::monitoring::host::HostTrends, crate::monitoring::host::Point,
        crate::monitoring::host::DiskRate, crate::monitoring::host::NetRate, crate::monitoring::host::ReadWrite,
        crate::monitoring::host::RxTx, crate::monitoring::HostProvider,
        crate::monitoring::throughput::ThroughputSummary, crate::monitoring::throughput::ThroughputWindow, crate::monitoring::throughput::Rates,
        crate::monitoring::capabilities::Capabilities, crate::monitoring::capabilities::GpuCapability,
        crate::monitoring::capabilities::ExporterCapability, crate::monitoring::capabilities::Exporters,
        crate::monitoring::capabilities::Providers,
        crate::monitoring::model_metrics::ModelMetrics, crate::monitoring::model_metrics::ServerMetrics,
        crate::monitoring::model_metrics::EngineMetrics, crate::monitoring::engine_figures::EngineKind,
    )),
    modifiers(&Security),
)]
struct AdminApi;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("<api-key>:<api-secret>")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("api-key"))),
        );
        components.add_security_scheme(
            "api_secret",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("api-secret"))),
        );
    }
}

/// The document.
pub fn spec() -> utoipa::openapi::OpenApi {
    AdminApi::openapi()
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}

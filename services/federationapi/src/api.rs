//! The `FederationApi` implementation: what clientapi asks of remote servers.

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::federation::FederationApi;
use ganglion_api::proto::federationapi as pb;
use serde_json::Value;

use crate::FederationService;
use ganglion_base::http::percent_encode as encode;
use ganglion_outbound::Signer;

impl FederationService {
    /// Forwards a JSON body to `server`'s `path`; its JSON answer.
    async fn forward(
        &self,
        request: pb::RemoteRequest,
        path: &str,
    ) -> Result<pb::RemoteResponse, ApiError> {
        let body: Value = serde_json::from_slice(&request.body_json)
            .map_err(|_| ApiError::InvalidInput("the request body is not JSON".into()))?;
        let answer = self
            .client
            .send(&request.server_name, http::Method::POST, path, Some(&body))
            .await?;
        Ok(pb::RemoteResponse {
            body_json: serde_json::to_vec(&answer)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        })
    }
}

#[async_trait]
impl FederationApi for FederationService {
    async fn query_directory(
        &self,
        request: pb::QueryDirectoryRequest,
    ) -> Result<pb::QueryDirectoryResponse, ApiError> {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            encode(&request.alias)
        );
        match self
            .client
            .send(&request.server_name, http::Method::GET, &path, None)
            .await
        {
            Ok(answer) => Ok(pb::QueryDirectoryResponse {
                room_id: answer["room_id"].as_str().map(str::to_owned),
                servers: answer["servers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
            }),
            Err(error) if error.errcode() == Some("M_NOT_FOUND") => {
                Ok(pb::QueryDirectoryResponse::default())
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn query_keys(&self, request: pb::RemoteRequest) -> Result<pb::RemoteResponse, ApiError> {
        self.forward(request, "/_matrix/federation/v1/user/keys/query")
            .await
    }

    async fn claim_keys(&self, request: pb::RemoteRequest) -> Result<pb::RemoteResponse, ApiError> {
        self.forward(request, "/_matrix/federation/v1/user/keys/claim")
            .await
    }

    async fn send_transaction(
        &self,
        request: pb::SendTransactionRequest,
    ) -> Result<pb::RemoteResponse, ApiError> {
        let parse = |items: &[Vec<u8>]| -> Result<Vec<Value>, ApiError> {
            items
                .iter()
                .map(|json| {
                    serde_json::from_slice(json)
                        .map_err(|_| ApiError::InvalidInput("a PDU or EDU is not JSON".into()))
                })
                .collect()
        };
        let body = serde_json::json!({
            "origin": self.server_name,
            "origin_server_ts": crate::key_ring::now_ms(),
            "pdus": parse(&request.pdus_json)?,
            "edus": parse(&request.edus_json)?,
        });
        let path = format!("/_matrix/federation/v1/send/{}", encode(&request.txn_id));
        let answer = self
            .client
            .send(&request.destination, http::Method::PUT, &path, Some(&body))
            .await?;
        Ok(pb::RemoteResponse {
            body_json: serde_json::to_vec(&answer)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        })
    }

    async fn join_room(
        &self,
        request: pb::JoinRoomRequest,
    ) -> Result<pb::JoinRoomResponse, ApiError> {
        self.join_remote_room(request).await
    }

    async fn invite(&self, request: pb::InviteRequest) -> Result<pb::JoinRoomResponse, ApiError> {
        self.invite_remote_user(request).await
    }

    async fn reject_invite(
        &self,
        request: pb::JoinRoomRequest,
    ) -> Result<pb::JoinRoomResponse, ApiError> {
        self.remote_membership(request, "leave").await
    }

    async fn knock_room(
        &self,
        request: pb::JoinRoomRequest,
    ) -> Result<pb::JoinRoomResponse, ApiError> {
        self.remote_membership(request, "knock").await
    }

    async fn query_profile(
        &self,
        request: pb::QueryProfileRequest,
    ) -> Result<pb::RemoteResponse, ApiError> {
        let server = ruma::UserId::parse(&request.user_id)
            .map_err(|_| ApiError::InvalidInput("not a user ID".into()))?
            .server_name()
            .to_string();
        let mut path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            encode(&request.user_id)
        );
        if !request.field.is_empty() {
            path.push_str(&format!("&field={}", encode(&request.field)));
        }
        let answer = self
            .client
            .send(&server, http::Method::GET, &path, None)
            .await?;
        Ok(pb::RemoteResponse {
            body_json: serde_json::to_vec(&answer)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        })
    }

    async fn backfill(
        &self,
        request: pb::BackfillRequest,
    ) -> Result<pb::BackfillResponse, ApiError> {
        self.backfill_room(request).await
    }

    async fn query_public_rooms(
        &self,
        request: pb::RemoteRequest,
    ) -> Result<pb::RemoteResponse, ApiError> {
        self.forward(request, "/_matrix/federation/v1/publicRooms")
            .await
    }

    async fn query_hierarchy(
        &self,
        request: pb::QueryHierarchyRequest,
    ) -> Result<pb::RemoteResponse, ApiError> {
        ganglion_base::limits::room_id(&request.room_id)
            .map_err(|e| ApiError::InvalidInput(e.error))?;
        let path = format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={}",
            encode(&request.room_id),
            request.suggested_only
        );
        let mut last = ApiError::NotFound("no server to ask about the room".into());
        let ours = self.client.server_name().to_string();
        for server in request
            .server_names
            .iter()
            .filter(|server| **server != ours)
            .take(MAX_HIERARCHY_SERVERS)
        {
            match self
                .client
                .send(server, http::Method::GET, &path, None)
                .await
            {
                // An answer about another room is no answer.
                Ok(answer) if answer["room"]["room_id"] == request.room_id.as_str() => {
                    return Ok(pb::RemoteResponse {
                        body_json: serde_json::to_vec(&answer)
                            .map_err(|e| ApiError::Internal(e.to_string()))?,
                    });
                }
                Ok(_) => last = ApiError::NotFound(format!("{server} answered about another room")),
                Err(error) => last = error.into(),
            }
        }
        Err(last)
    }

    async fn sign_request(
        &self,
        request: pb::SignRequestRequest,
    ) -> Result<pb::SignRequestResponse, ApiError> {
        // The key signs only what other services need it for.
        if request.method != "GET" || !request.uri.starts_with(SIGNED_FOR_OTHERS) {
            return Err(ApiError::Forbidden(
                "only GETs of the federation media API are signed for other services".into(),
            ));
        }
        let destination = ruma::ServerName::parse(&request.destination)
            .map_err(|_| ApiError::InvalidInput("not a server name".into()))?;
        let authorization = self
            .signer
            .authorization(&destination, &http::Method::GET, &request.uri, &[])
            .await
            .map_err(ApiError::Internal)?;
        Ok(pb::SignRequestResponse {
            authorization: authorization
                .to_str()
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .to_owned(),
        })
    }

    async fn authenticate_request(
        &self,
        request: pb::AuthenticateRequestRequest,
    ) -> Result<pb::AuthenticateRequestResponse, ApiError> {
        let refused = |refusal: String| pb::AuthenticateRequestResponse {
            origin: None,
            refusal,
        };
        let (Ok(method), Ok(uri)) = (
            http::Method::from_bytes(request.method.as_bytes()),
            request.uri.parse::<http::Uri>(),
        ) else {
            return Ok(refused("malformed request".into()));
        };
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&request.authorization) {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok(
            match crate::auth::origin_of(self, &method, &uri, &headers, &request.content).await {
                Ok(origin) => pb::AuthenticateRequestResponse {
                    origin: Some(origin),
                    refusal: String::new(),
                },
                Err(error) => refused(error.error),
            },
        )
    }
}

/// The most of a child's `via` servers one hierarchy lookup tries.
const MAX_HIERARCHY_SERVERS: usize = 3;

/// What the federationapi signs when another service asks.
const SIGNED_FOR_OTHERS: &str = "/_matrix/federation/v1/media/";

{{/*
The configuration every process of the release reads (JSON of the TOML
document): `config` from the values, then what the chart decides on top.
Option names are Ganglion's (`ganglion generate-config`); the check script
compares every one of them with that output and runs `ganglion check-config`
on each rendered process.
*/}}

{{/* Where the pods find their files. */}}
{{- define "ganglion.paths" -}}
config: /etc/ganglion/config/ganglion.toml
data: /var/lib/ganglion
signingKey: /etc/ganglion/keys/signing.key
internalSecret: /etc/ganglion/keys/internal.secret
kafkaCa: /etc/ganglion/kafka/ca/ca.crt
kafkaClientCertificate: /etc/ganglion/kafka/client/tls.crt
kafkaClientKey: /etc/ganglion/kafka/client/tls.key
kafkaSaslPassword: /etc/ganglion/kafka/sasl/password
federationTlsCertificate: /etc/ganglion/federation-tls/tls.crt
federationTlsKey: /etc/ganglion/federation-tls/tls.key
media: /var/lib/ganglion/media
mediaS3SecretAccessKey: /etc/ganglion/media-s3/secret-access-key
{{- end -}}

{{- define "ganglion.configDict" -}}
{{- $root := . -}}
{{- $paths := fromYaml (include "ganglion.paths" .) -}}
{{- $host := include "ganglion.listenHost" . -}}
{{- $managed := dict "server_name" (include "ganglion.serverName" .) "data_dir" $paths.data -}}
{{- $federation := dict "signing_key_path" $paths.signingKey -}}
{{- $log := dict "partitions" (int .Values.kafka.partitions) -}}
{{- $_ := include "ganglion.media" . -}}
{{- $_ := set $managed "media" (dict "max_upload_bytes" (int64 .Values.media.maxUploadBytes) "user_quota_bytes" (int64 .Values.media.userQuotaBytes)) -}}
{{- if eq (include "ganglion.mode" .) "monolith" -}}
{{- $ports := fromJson (include "ganglion.monolithPorts" .) -}}
{{- $_ := set $managed "client" (dict "listen" (printf "%s:%d" $host (int $ports.http))) -}}
{{- $_ := set $managed "operator" (dict "listen" (printf "%s:%d" $host (int $ports.operator))) -}}
{{- $_ := set $federation "listen" (printf "%s:%d" $host (int $ports.federation)) -}}
{{- if .Values.monolith.federationTlsSecret -}}
{{- $_ := set $federation "tls_certificate_path" $paths.federationTlsCertificate -}}
{{- $_ := set $federation "tls_private_key_path" $paths.federationTlsKey -}}
{{- end -}}
{{- $_ := set $log "backend" "embedded" -}}
{{- else -}}
{{- $catalog := fromYaml (include "ganglion.catalog" .) -}}
{{- $_ := set $managed "client" (dict "listen" (printf "%s:%d" $host (int $catalog.gateway.ports.http))) -}}
{{- $_ := set $managed "operator" (dict "listen" (printf "%s:%d" $host (int $catalog.gateway.ports.operator))) -}}
{{- $_ := set $managed "internal" (dict "secret_file" $paths.internalSecret) -}}
{{- $kafka := .Values.kafka -}}
{{- $_ := set $log "backend" "kafka" -}}
{{- $_ := set $log "kafka_brokers" (required "kafka.brokers is required in the polylith: the Kafka bootstrap servers, comma separated" $kafka.brokers) -}}
{{- $_ := set $log "kafka_replication_factor" (int $kafka.replicationFactor) -}}
{{- $_ := set $log "topic_prefix" $kafka.topicPrefix -}}
{{- $_ := set $log "kafka_security_protocol" $kafka.securityProtocol -}}
{{- $_ := set $log "kafka_sasl_mechanism" $kafka.sasl.mechanism -}}
{{- if $kafka.sasl.username -}}
{{- $_ := set $log "kafka_sasl_username" $kafka.sasl.username -}}
{{- end -}}
{{- if $kafka.sasl.passwordSecret.name -}}
{{- $_ := set $log "kafka_sasl_password_file" $paths.kafkaSaslPassword -}}
{{- end -}}
{{- if $kafka.caSecret.name -}}
{{- $_ := set $log "kafka_ssl_ca_location" $paths.kafkaCa -}}
{{- end -}}
{{- if $kafka.clientCertSecret.name -}}
{{- $_ := set $log "kafka_ssl_certificate_location" $paths.kafkaClientCertificate -}}
{{- $_ := set $log "kafka_ssl_key_location" $paths.kafkaClientKey -}}
{{- end -}}
{{- $services := dict -}}
{{- range $name := fromJsonArray (include "ganglion.configServices" $root) -}}
{{- $ports := (get $catalog $name).ports -}}
{{- $section := dict "listen" (printf "%s:%d" $host (int $ports.grpc)) "operator_listen" (printf "%s:%d" $host (int $ports.operator)) -}}
{{- if hasKey $ports "http" -}}
{{- $_ := set $section "http_listen" (printf "%s:%d" $host (int $ports.http)) -}}
{{- end -}}
{{- $_ := set $section "replicas" (fromJsonArray (include "ganglion.replicaEntries" (dict "root" $root "name" $name))) -}}
{{- $_ := set $services $name $section -}}
{{- end -}}
{{- $_ := set $managed "services" $services -}}
{{- end -}}
{{- $_ := set $managed "federation" $federation -}}
{{- $_ := set $managed "log" $log -}}
{{- toJson (mergeOverwrite (deepCopy (.Values.config | default dict)) $managed) -}}
{{- end -}}

{{- define "ganglion.configToml" -}}
# Ganglion configuration, rendered by the Helm chart from its values.
# Per-process settings (database URLs, the syncapi's replica ID, the
# roomserver's own address) come from each pod's environment.
{{ include "ganglion.toml.table" (dict "table" (fromJson (include "ganglion.configDict" .)) "path" "") }}
{{- end -}}

{{/*
Names, labels and the pieces every workload shares. The TOML writer is in
_toml.tpl, the configuration in _config.tpl, the pod template in _pod.tpl.
*/}}

{{- define "ganglion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ganglion.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The objects of one component: (dict "root" $ "name" "roomserver"). */}}
{{- define "ganglion.componentName" -}}
{{- printf "%s-%s" (include "ganglion.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ganglion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ganglion.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "ganglion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ganglion.selectorLabels" . }}
app.kubernetes.io/part-of: ganglion
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "ganglion.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ganglion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ganglion.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ganglion.serverName" -}}
{{- required "serverName is required: the Matrix server name, the part after the colon in user IDs (it cannot change once users exist)" .Values.serverName -}}
{{- end -}}

{{- define "ganglion.mode" -}}
{{- if not (has .Values.mode (list "polylith" "monolith")) -}}
{{- fail (printf "mode must be polylith or monolith, not %q" .Values.mode) -}}
{{- end -}}
{{- .Values.mode -}}
{{- end -}}

{{/*
What the chart knows of each process: its ports (Ganglion's defaults: gRPC
7770+i, public HTTP +100, operator +200; the gateway on 8008 and 9008), its
kind, whether it has public HTTP routes (reached only by the gateway), a
database and the signing key. One home for all of it.
  edge:      the gateway, stateless, in front of everything
  stateless: a Deployment with an HPA; callers reach it through its Service
  writer:    a Deployment whose replicas split the Kafka partitions
  view:      the syncapi, a StatefulSet, one database per replica
*/}}
{{- define "ganglion.catalog" -}}
gateway: {kind: edge, ports: {http: 8008, operator: 9008}}
userapi: {kind: stateless, database: true, ports: {grpc: 7770, operator: 7970}}
roomserver: {kind: writer, database: true, signingKey: true, ports: {grpc: 7771, operator: 7971}}
syncapi: {kind: view, database: true, ports: {grpc: 7772, http: 7872, operator: 7972}}
keyserver: {kind: stateless, database: true, ports: {grpc: 7773, operator: 7973}}
federationapi: {kind: stateless, database: true, signingKey: true, ports: {grpc: 7774, http: 7874, operator: 7974}}
federationsender: {kind: writer, database: true, ports: {grpc: 7775, operator: 7975}}
mediaapi: {kind: stateless, database: true, ports: {grpc: 7776, http: 7876, operator: 7976}}
clientapi: {kind: stateless, database: true, ports: {grpc: 7777, http: 7877, operator: 7977}}
{{- end -}}

{{/* The services Ganglion's configuration has a section for (all but the gateway), in its order. */}}
{{- define "ganglion.configServices" -}}
{{- toJson (list "userapi" "roomserver" "syncapi" "keyserver" "federationapi" "federationsender" "mediaapi" "clientapi") -}}
{{- end -}}

{{/* The Deployments of the polylith: everything but the syncapi. */}}
{{- define "ganglion.deployments" -}}
{{- toJson (list "gateway" "clientapi" "userapi" "keyserver" "federationapi" "mediaapi" "roomserver" "federationsender") -}}
{{- end -}}

{{- define "ganglion.monolithPorts" -}}
{{- toJson (dict "http" 8008 "federation" 8448 "operator" 9008) -}}
{{- end -}}

{{- define "ganglion.listenHost" -}}
{{- ternary "[::]" "0.0.0.0" .Values.network.ipv6 -}}
{{- end -}}

{{/* A Service's DNS name: (dict "root" $ "name" "clientapi"). */}}
{{- define "ganglion.serviceHost" -}}
{{- printf "%s.%s.svc" (include "ganglion.componentName" .) .root.Release.Namespace -}}
{{- end -}}

{{/* The headless Service giving each syncapi pod its DNS name. */}}
{{- define "ganglion.syncapiPodsService" -}}
{{- printf "%s-pods" (include "ganglion.componentName" (dict "root" . "name" "syncapi")) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Every replica of a service as the other processes reach it, for
services.<name>.replicas (JSON list).
- The syncapi: one entry per StatefulSet pod, at its stable DNS name
  (<pod>.<headless service>), named after the pod: users are placed on
  replicas by this name, and each replica's /readyz decides whether it
  takes users.
- Every other service: one entry, its Service. Kubernetes already sends
  new connections only to ready pods, so "the Service is ready" (some pod
  is) is what callers need; no caller addresses a given replica of these.
*/}}
{{- define "ganglion.replicaEntries" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $ports := (get (fromYaml (include "ganglion.catalog" $root)) $name).ports -}}
{{- $entries := list -}}
{{- if eq $name "syncapi" -}}
{{- $statefulSet := include "ganglion.componentName" (dict "root" $root "name" "syncapi") -}}
{{- range $i := until (int $root.Values.services.syncapi.replicas) -}}
{{- $host := printf "%s-%d.%s.%s.svc.%s" $statefulSet $i (include "ganglion.syncapiPodsService" $root) $root.Release.Namespace $root.Values.clusterDomain -}}
{{- $entries = append $entries (dict "name" (printf "%s-%d" $statefulSet $i) "address" (printf "http://%s:%d" $host (int $ports.grpc)) "http_address" (printf "http://%s:%d" $host (int $ports.http)) "operator_address" (printf "http://%s:%d" $host (int $ports.operator))) -}}
{{- end -}}
{{- else -}}
{{- $host := include "ganglion.serviceHost" (dict "root" $root "name" $name) -}}
{{- $entry := dict "name" $name "address" (printf "http://%s:%d" $host (int $ports.grpc)) "operator_address" (printf "http://%s:%d" $host (int $ports.operator)) -}}
{{- if hasKey $ports "http" -}}
{{- $_ := set $entry "http_address" (printf "http://%s:%d" $host (int $ports.http)) -}}
{{- end -}}
{{- $entries = append $entries $entry -}}
{{- end -}}
{{- toJson $entries -}}
{{- end -}}

{{/*
The replica count of a polylith component, checked: a writer cannot use more
replicas than there are partitions. (dict "root" $ "name" "roomserver")
*/}}
{{- define "ganglion.checkReplicas" -}}
{{- $values := get .root.Values.services .name -}}
{{- $kind := (get (fromYaml (include "ganglion.catalog" .root)) .name).kind -}}
{{- $partitions := int .root.Values.kafka.partitions -}}
{{- if lt (int $values.replicas) 1 -}}
{{- fail (printf "services.%s.replicas must be at least 1" .name) -}}
{{- end -}}
{{- if eq $kind "writer" -}}
{{- if gt (int $values.replicas) $partitions -}}
{{- fail (printf "services.%s.replicas (%d) is more than kafka.partitions (%d): %s replicas split the topics' partitions between them, so a replica beyond the partition count would hold none and do no work. Lower the replicas, or raise kafka.partitions before Ganglion first creates its topics (an existing topic keeps its count)." .name (int $values.replicas) $partitions .name) -}}
{{- end -}}
{{- if and $values.autoscaling $values.autoscaling.enabled (gt (int $values.autoscaling.maxReplicas) $partitions) -}}
{{- fail (printf "services.%s.autoscaling.maxReplicas (%d) is more than kafka.partitions (%d): %s replicas beyond the partition count would do no work." .name (int $values.autoscaling.maxReplicas) $partitions .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The media store, checked (JSON): store (pvc or s3); for pvc in the polylith
claim (the PersistentVolumeClaim of the mediaapi pods), create (the chart
makes it) and shared (ReadWriteMany: pods on several nodes at once).
Rendering fails on a store that cannot work: more than one mediaapi pod on a
volume only one node may mount, an s3 store without a bucket, half the
credentials.
*/}}
{{- define "ganglion.media" -}}
{{- $root := . -}}
{{- $media := .Values.media -}}
{{- if not (has $media.store (list "pvc" "s3")) -}}
{{- fail (printf "media.store must be pvc or s3, not %q" $media.store) -}}
{{- end -}}
{{- if lt (float64 $media.maxUploadBytes) 1.0 -}}
{{- fail "media.maxUploadBytes must be greater than 0" -}}
{{- end -}}
{{- $info := dict "store" $media.store -}}
{{- if eq $media.store "s3" -}}
{{- $s3 := $media.s3 -}}
{{- $_ := required "media.s3.bucket is required when media.store is s3: the bucket every mediaapi replica keeps media in" $s3.bucket -}}
{{- if ne (not $s3.accessKeyId) (not $s3.secretAccessKeySecret.name) -}}
{{- fail "media.s3.accessKeyId and media.s3.secretAccessKeySecret.name go together: give both, or neither" -}}
{{- end -}}
{{- if $s3.secretAccessKeySecret.name -}}
{{- $_ := required "media.s3.secretAccessKeySecret.key is required with its name" $s3.secretAccessKeySecret.key -}}
{{- end -}}
{{- else if eq (include "ganglion.mode" $root) "polylith" -}}
{{- $pvc := $media.pvc -}}
{{- if not (has $pvc.accessMode (list "ReadWriteOnce" "ReadWriteOncePod" "ReadWriteMany")) -}}
{{- fail (printf "media.pvc.accessMode must be ReadWriteOnce, ReadWriteOncePod or ReadWriteMany, not %q" $pvc.accessMode) -}}
{{- end -}}
{{- $shared := eq $pvc.accessMode "ReadWriteMany" -}}
{{- $mediaapi := $root.Values.services.mediaapi -}}
{{- $pods := printf "services.mediaapi.replicas is %d" (int $mediaapi.replicas) -}}
{{- $several := gt (int $mediaapi.replicas) 1 -}}
{{- if $mediaapi.autoscaling.enabled -}}
{{- $pods = printf "services.mediaapi.autoscaling is enabled, up to %d replicas" (int $mediaapi.autoscaling.maxReplicas) -}}
{{- $several = gt (int $mediaapi.autoscaling.maxReplicas) 1 -}}
{{- end -}}
{{- if and $several (not $shared) -}}
{{- fail (printf "media.store is pvc and the mediaapi may run more than one pod (%s), but media.pvc.accessMode is %s: every mediaapi pod mounts the one media volume, which needs media.pvc.accessMode ReadWriteMany (NFS, CephFS, EFS...). Or use media.store s3, or one mediaapi replica without autoscaling." $pods $pvc.accessMode) -}}
{{- end -}}
{{- $_ := set $info "claim" (default (printf "%s-media" (include "ganglion.fullname" $root)) $pvc.existingClaim) -}}
{{- $_ := set $info "create" (not $pvc.existingClaim) -}}
{{- $_ := set $info "shared" $shared -}}
{{- end -}}
{{- toJson $info -}}
{{- end -}}

{{/* The Secret holding signing.key and internal.secret. */}}
{{- define "ganglion.keysSecretName" -}}
{{- if .Values.keys.existingSecret -}}
{{- .Values.keys.existingSecret -}}
{{- else -}}
{{- printf "%s-keys" (include "ganglion.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Whether the hook Job generates the keys. */}}
{{- define "ganglion.generateKeys" -}}
{{- if and (not .Values.keys.existingSecret) (not .Values.keys.signingKey) -}}
{{- if .Values.keys.internalSecret -}}
{{- fail "keys.internalSecret is given without keys.signingKey: give both, or neither (a hook Job then generates both)" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* Probes on the operator port: (dict "root" $). */}}
{{- define "ganglion.probes" -}}
{{- $pod := .root.Values.pod -}}
startupProbe:
  httpGet: {path: /healthz, port: operator}
  {{- toYaml $pod.startupProbe | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: operator}
  {{- toYaml $pod.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: operator}
  {{- toYaml $pod.readinessProbe | nindent 2 }}
{{- end -}}

{{/* A NetworkPolicy peer: the Ganglion processes of this release (not the hook Job). */}}
{{- define "ganglion.processesPeer" -}}
podSelector:
  matchLabels:
    app.kubernetes.io/name: {{ include "ganglion.name" . }}
    app.kubernetes.io/instance: {{ .Release.Name }}
  matchExpressions:
    - key: app.kubernetes.io/component
      operator: In
      values: {{ keys (fromYaml (include "ganglion.catalog" .)) | sortAlpha | toJson }}
{{- end -}}

{{/*
The pod template of every Ganglion process:
(dict "root" $ "name" "roomserver" "values" <its values> "personality" "roomserver"
      "dataClaim" true-if-the-data-volume-is-a-volumeClaimTemplate)
*/}}
{{- define "ganglion.podTemplate" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $values := .values -}}
{{- $pod := $root.Values.pod -}}
{{- $paths := fromYaml (include "ganglion.paths" $root) -}}
{{- $monolith := eq $name "monolith" -}}
{{- $ports := dict -}}
{{- $info := dict -}}
{{- /* The process that keeps media, and where. */ -}}
{{- $media := dict -}}
{{- if has $name (list "mediaapi" "monolith") -}}
{{- $media = fromJson (include "ganglion.media" $root) -}}
{{- end -}}
{{- if $monolith -}}
{{- $ports = fromJson (include "ganglion.monolithPorts" $root) -}}
{{- $info = dict "signingKey" true -}}
{{- else -}}
{{- $info = get (fromYaml (include "ganglion.catalog" $root)) $name -}}
{{- $ports = $info.ports -}}
{{- end -}}
metadata:
  labels:
    {{- include "ganglion.selectorLabels" (dict "root" $root "name" $name) | nindent 4 }}
    {{- with $pod.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A changed configuration rolls every pod.
    checksum/config: {{ include "ganglion.configToml" $root | sha256sum }}
    {{- with $pod.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ganglion.serviceAccountName" $root }}
  automountServiceAccountToken: false
  # Kubernetes would otherwise put <SERVICE>_PORT variables in the
  # environment, and a release named "ganglion" has Services whose
  # variables start with GANGLION_, which Ganglion reads as options.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $pod.terminationGracePeriodSeconds }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $pod.securityContext | nindent 4 }}
  {{- with (default $pod.nodeSelector $values.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $pod.tolerations $values.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $pod.affinity $values.affinity) }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $pod.topologySpreadConstraints $values.topologySpreadConstraints) }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $name }}
      image: {{ include "ganglion.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["ganglion"]
      args: ["--config", {{ $paths.config | quote }}, {{ .personality | quote }}]
      securityContext:
        {{- toYaml $pod.containerSecurityContext | nindent 8 }}
      ports:
        {{- range $port := keys $ports | sortAlpha }}
        - name: {{ $port }}
          containerPort: {{ int (get $ports $port) }}
          protocol: TCP
        {{- end }}
      env:
        {{- include "ganglion.env" (dict "root" $root "name" $name "values" $values) | nindent 8 }}
      {{- include "ganglion.probes" (dict "root" $root) | nindent 6 }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      volumeMounts:
        - {name: config, mountPath: /etc/ganglion/config, readOnly: true}
        - {name: data, mountPath: {{ $paths.data }}}
        - {name: tmp, mountPath: /tmp}
        {{- if or $info.signingKey (not $monolith) }}
        - {name: keys, mountPath: /etc/ganglion/keys, readOnly: true}
        {{- end }}
        {{- if not $monolith }}
        {{- with $root.Values.kafka }}
        {{- if .caSecret.name }}
        - {name: kafka-ca, mountPath: /etc/ganglion/kafka/ca, readOnly: true}
        {{- end }}
        {{- if .clientCertSecret.name }}
        - {name: kafka-client, mountPath: /etc/ganglion/kafka/client, readOnly: true}
        {{- end }}
        {{- if .sasl.passwordSecret.name }}
        - {name: kafka-sasl, mountPath: /etc/ganglion/kafka/sasl, readOnly: true}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- if and $monolith $root.Values.monolith.federationTlsSecret }}
        - {name: federation-tls, mountPath: /etc/ganglion/federation-tls, readOnly: true}
        {{- end }}
        {{- if $media.claim }}
        # The blob store of every mediaapi replica (media.path).
        - {name: media, mountPath: {{ $paths.media }}}
        {{- end }}
        {{- if and (eq (toString $media.store) "s3") $root.Values.media.s3.secretAccessKeySecret.name }}
        - {name: media-s3, mountPath: {{ dir $paths.mediaS3SecretAccessKey }}, readOnly: true}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "ganglion.fullname" $root }}-config
    {{- if not .dataClaim }}
    # This process keeps nothing of its own here: its database is
    # PostgreSQL and its log Kafka (only the federation listener's
    # self-signed certificate is generated here; the mediaapi's files are on
    # a volume claim of their own, or in a bucket).
    - name: data
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if or $info.signingKey (not $monolith) }}
    - name: keys
      secret:
        secretName: {{ include "ganglion.keysSecretName" $root }}
        defaultMode: 0440
        # Only what this process needs: the signing key where events or
        # federation requests are signed, the internal secret in the polylith.
        items:
          {{- if $info.signingKey }}
          - {key: signing.key, path: signing.key}
          {{- end }}
          {{- if not $monolith }}
          - {key: internal.secret, path: internal.secret}
          {{- end }}
    {{- end }}
    {{- if not $monolith }}
    {{- with $root.Values.kafka }}
    {{- if .caSecret.name }}
    - name: kafka-ca
      secret:
        secretName: {{ .caSecret.name }}
        items: [{key: {{ .caSecret.key | quote }}, path: ca.crt}]
    {{- end }}
    {{- if .clientCertSecret.name }}
    - name: kafka-client
      secret:
        secretName: {{ .clientCertSecret.name }}
        defaultMode: 0440
        items:
          - {key: {{ .clientCertSecret.certificateKey | quote }}, path: tls.crt}
          - {key: {{ .clientCertSecret.privateKeyKey | quote }}, path: tls.key}
    {{- end }}
    {{- if .sasl.passwordSecret.name }}
    - name: kafka-sasl
      secret:
        secretName: {{ .sasl.passwordSecret.name }}
        defaultMode: 0440
        items: [{key: {{ .sasl.passwordSecret.key | quote }}, path: password}]
    {{- end }}
    {{- end }}
    {{- end }}
    {{- if and $monolith $root.Values.monolith.federationTlsSecret }}
    - name: federation-tls
      secret:
        secretName: {{ $root.Values.monolith.federationTlsSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if $media.claim }}
    - name: media
      persistentVolumeClaim:
        claimName: {{ $media.claim }}
    {{- end }}
    {{- if and (eq (toString $media.store) "s3") $root.Values.media.s3.secretAccessKeySecret.name }}
    - name: media-s3
      secret:
        secretName: {{ $root.Values.media.s3.secretAccessKeySecret.name }}
        defaultMode: 0440
        items: [{key: {{ $root.Values.media.s3.secretAccessKeySecret.key | quote }}, path: {{ base $paths.mediaS3SecretAccessKey }}}]
    {{- end }}
{{- end -}}

{{/*
The environment of a process: what differs between pods of one release.
Only Ganglion options start with GANGLION_ (the loader reads every such
variable as one); helpers have other names.
*/}}
{{- define "ganglion.env" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $values := .values -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
{{- if eq $name "syncapi" }}
- name: POD_INDEX
  valueFrom: {fieldRef: {fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']"}}
# The replica's name for its log readers: unique per pod (the default is
# derived from the listen address, the same in every pod).
- name: GANGLION_SERVICES__SYNCAPI__REPLICA_ID
  value: $(POD_NAME)
{{- end }}
{{- if eq $name "roomserver" }}
# Where the replica that processes an input sends its outcome back: this
# pod, not the Service (which would pick any replica).
- name: GANGLION_SERVICES__ROOMSERVER__ADDRESS
  value: {{ printf "http://%s:%d" (ternary "[$(POD_IP)]" "$(POD_IP)" $root.Values.network.ipv6) (int (get (fromYaml (include "ganglion.catalog" $root)) "roomserver").ports.grpc) | quote }}
{{- end }}
{{- include "ganglion.databaseEnv" . }}
{{- include "ganglion.mediaEnv" . }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A polylith process's own database URL (GANGLION_SERVICES__<NAME>__DATABASE_URL):
from a Secret holding the whole URL, or built from `postgresql` with the
password from its Secret through $(DATABASE_PASSWORD). The syncapi's names
the pod's ordinal; on SQLite it keeps the default, <data_dir>/syncapi.db on
its own volume.
*/}}
{{- define "ganglion.databaseEnv" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $values := .values -}}
{{- $info := get (fromYaml (include "ganglion.catalog" $root)) $name -}}
{{- if and $info $info.database -}}
{{- $variable := printf "GANGLION_SERVICES__%s__DATABASE_URL" (upper $name) -}}
{{- $pg := $root.Values.postgresql -}}
{{- $urlSecret := $values.databaseUrlSecret | default dict -}}
{{- if and (eq $name "syncapi") (eq $values.database "sqlite") -}}
{{- else if $urlSecret.name }}
- name: {{ $variable }}
  valueFrom: {secretKeyRef: {name: {{ $urlSecret.name }}, key: {{ required (printf "services.%s.databaseUrlSecret.key is required with its name" $name) $urlSecret.key | quote }}}}
{{- else if $pg.host -}}
{{- $user := $pg.username -}}
{{- if $pg.passwordSecret.name }}
- name: DATABASE_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $pg.passwordSecret.name }}, key: {{ $pg.passwordSecret.key | quote }}}}
{{- $user = printf "%s:$(DATABASE_PASSWORD)" $pg.username -}}
{{- end -}}
{{- $database := printf "%s%s" $pg.databasePrefix $name -}}
{{- if eq $name "syncapi" -}}
{{- $database = printf "%s_$(POD_INDEX)" $database -}}
{{- end }}
- name: {{ $variable }}
  value: {{ printf "postgres://%s@%s:%d/%s%s" $user $pg.host (int $pg.port) $database (ternary (printf "?%s" $pg.options) "" (ne $pg.options "")) | quote }}
{{- else if eq $name "syncapi" -}}
{{- fail "services.syncapi needs a database per replica: set postgresql.host, or services.syncapi.database: sqlite (a volume per replica)" -}}
{{- else -}}
{{- fail (printf "services.%s needs a database shared by its replicas: set postgresql.host, or services.%s.databaseUrlSecret" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The media store of the process that keeps media (the mediaapi, or the
monolith): a directory on its volume (GANGLION_MEDIA__PATH: the volume claim
`media` in the polylith, the data volume in the monolith), or the S3 bucket,
its secret key in a file mounted from a Secret.
*/}}
{{- define "ganglion.mediaEnv" -}}
{{- $root := .root -}}
{{- if has .name (list "mediaapi" "monolith") -}}
{{- $paths := fromYaml (include "ganglion.paths" $root) -}}
{{- $media := fromJson (include "ganglion.media" $root) -}}
{{- if eq $media.store "pvc" }}
- name: GANGLION_MEDIA__STORE
  value: fs
- name: GANGLION_MEDIA__PATH
  value: {{ $paths.media | quote }}
{{- else }}
{{- $s3 := $root.Values.media.s3 }}
- name: GANGLION_MEDIA__STORE
  value: s3
- name: GANGLION_MEDIA__S3__BUCKET
  value: {{ $s3.bucket | quote }}
- name: GANGLION_MEDIA__S3__REGION
  value: {{ $s3.region | quote }}
{{- with $s3.endpoint }}
- name: GANGLION_MEDIA__S3__ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $s3.prefix }}
- name: GANGLION_MEDIA__S3__PREFIX
  value: {{ . | quote }}
{{- end }}
- name: GANGLION_MEDIA__S3__ALLOW_HTTP
  value: {{ ternary "true" "false" (eq (toString $s3.allowHttp) "true") | quote }}
{{- with $s3.accessKeyId }}
- name: GANGLION_MEDIA__S3__ACCESS_KEY_ID
  value: {{ . | quote }}
{{- end }}
{{- if $s3.secretAccessKeySecret.name }}
- name: GANGLION_MEDIA__S3__SECRET_ACCESS_KEY_FILE
  value: {{ $paths.mediaS3SecretAccessKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

// Image references from the files teams deploy with: plain lists, Kubernetes manifests, Helm
// output, Compose files and CI configs, as they are written in the wild.
import t from "tap";
import { ImageListError, imageRefsFromText } from "../../src/prefill/image-list.ts";

const DEPLOYMENT = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels: { app: shop }
spec:
  replicas: 3
  selector:
    matchLabels: { app: shop }
  template:
    metadata:
      labels: { app: shop }
    spec:
      initContainers:
        - name: migrate
          image: ghcr.io/acme/shop-migrations:1.4.2
          command: ["./migrate", "up"]
      containers:
        - name: web
          image: "ghcr.io/acme/shop:1.4.2"
          ports: [{ containerPort: 8080 }]
          env:
            - name: IMAGE_NOTE
              value: "image: not-a-key-here"
        - name: sidecar
          image: docker.io/envoyproxy/envoy:v1.30.1
        - name: web-again
          image: ghcr.io/acme/shop:1.4.2
`;

const CRONJOB = `apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly-report
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: registry.k8s.io/busybox@sha256:a0cea4d1c7ed8fb6b6c0ac45d3a9f8a1a5a8c8e3d2ee0fdb5f7bb3a6e3ab1c3d
              args: ["/bin/sh", "-c", "date"]
`;

const HELM_RENDERED = `---
# Source: redis/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: release-redis
---
# Source: redis/templates/master/statefulset.yaml
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: release-redis-master
spec:
  template:
    spec:
      containers:
        - name: redis
          image: docker.io/bitnami/redis:7.2.4-debian-12-r9
          imagePullPolicy: "IfNotPresent"
        - name: metrics
          image: docker.io/bitnami/redis-exporter:1.58.0
---
# Source: redis/templates/tests/test-connection.yaml
apiVersion: v1
kind: Pod
metadata:
  name: "release-redis-test"
  annotations:
    "helm.sh/hook": test
spec:
  containers:
    - name: ping
      image: "busybox:1.36"
---
`;

const COMPOSE = `name: shop
services:
  db:
    image: postgres:16-alpine
    environment:
      POSTGRES_PASSWORD: example
  cache:
    image: redis
  web:
    build: .
    image: registry.example.test:5000/shop/web:\${TAG:-latest}
    depends_on: [db, cache]
  proxy:
    image: $PROXY_IMAGE
volumes:
  data: {}
`;

const GITLAB_CI = `default:
  image: ruby:3.3

variables:
  POSTGRES_DB: test

stages: [build, test]

build:
  stage: build
  image:
    name: gcr.io/kaniko-project/executor:v1.23.0-debug
    entrypoint: [""]
  script:
    - /kaniko/executor --destination "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"

test:
  stage: test
  image: $CI_REGISTRY_IMAGE:$CI_COMMIT_SHA
  services:
    - postgres:15
    - name: redis:7
      alias: cache
  script:
    - bundle exec rake test
`;

const GITHUB_ACTIONS = `name: ci
on:
  push:
    branches: [main]
jobs:
  test:
    runs-on: ubuntu-latest
    container:
      image: node:20-bookworm
      options: --cpus 1
    services:
      postgres:
        image: postgres:16
        env:
          POSTGRES_PASSWORD: postgres
        ports: ["5432:5432"]
      redis:
        image: redis:7-alpine
    steps:
      - uses: actions/checkout@v4
      - run: npm test
  lint:
    runs-on: ubuntu-latest
    container: golangci/golangci-lint:v1.59
    steps:
      - run: golangci-lint run
`;

t.test("image references from files teams deploy with", async (t) => {
  const cases: Array<[name: string, text: string, refs: string[], skipped?: string[]]> = [
    [
      "a plain list with comments, blank lines and a repeat",
      "# what the line runs\nalpine:3.20\n\n  ghcr.io/acme/shop:1.4.2   # the shop\n127.0.0.1:5000/team/app@sha256:" + "a".repeat(64) + "\nalpine:3.20\n",
      ["alpine:3.20", "ghcr.io/acme/shop:1.4.2", "127.0.0.1:5000/team/app@sha256:" + "a".repeat(64)],
    ],
    [
      "a Deployment: initContainers before containers, a repeat kept once, a value that only looks like a key",
      DEPLOYMENT,
      ["ghcr.io/acme/shop-migrations:1.4.2", "ghcr.io/acme/shop:1.4.2", "docker.io/envoyproxy/envoy:v1.30.1"],
    ],
    ["a CronJob, by digest", CRONJOB, ["registry.k8s.io/busybox@sha256:a0cea4d1c7ed8fb6b6c0ac45d3a9f8a1a5a8c8e3d2ee0fdb5f7bb3a6e3ab1c3d"]],
    [
      "Helm output: several documents, empty ones between",
      HELM_RENDERED,
      ["docker.io/bitnami/redis:7.2.4-debian-12-r9", "docker.io/bitnami/redis-exporter:1.58.0", "busybox:1.36"],
    ],
    [
      "a Compose file: variables skipped",
      COMPOSE,
      ["postgres:16-alpine", "redis"],
      ["registry.example.test:5000/shop/web:${TAG:-latest}", "$PROXY_IMAGE"],
    ],
    [
      "a .gitlab-ci.yml: image strings, image mappings with a name, services as strings and mappings",
      GITLAB_CI,
      ["ruby:3.3", "gcr.io/kaniko-project/executor:v1.23.0-debug", "postgres:15", "redis:7"],
      ["$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"],
    ],
    [
      "a GitHub Actions workflow: container.image, services.*.image, container as a string",
      GITHUB_ACTIONS,
      ["node:20-bookworm", "postgres:16", "redis:7-alpine", "golangci/golangci-lint:v1.59"],
    ],
    [
      "JSON (a kubectl get -o json list)",
      JSON.stringify({ kind: "List", items: [{ spec: { containers: [{ name: "a", image: "nginx:1.27" }, { name: "b", image: "nginx:1.27" }] } }] }),
      ["nginx:1.27"],
    ],
    [
      "JSON on several lines",
      '{\n  "image": "alpine:3.20",\n  "sidecars": [{"image": "busybox"}]\n}\n',
      ["alpine:3.20", "busybox"],
    ],
    ["an empty file", "", []],
    ["only comments", "# nothing yet\n\n", []],
    [
      "a Helm values file: image mappings without a name are reported",
      "image:\n  repository: bitnami/redis\n  tag: 7.2.4\n",
      [],
      ['image: {"repository":"bitnami/redis","tag":"7.2.4"}'],
    ],
    ["an unrendered Helm template value", 'image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"\n', [], ["{{ .Values.image.repository }}:{{ .Values.image.tag }}"]],
  ];
  for (const [name, text, refs, skipped = []] of cases) {
    const got = imageRefsFromText(text);
    t.same(got.refs, refs, `${name}: the images`);
    t.same(
      got.skipped.map((s) => s.value),
      skipped,
      `${name}: what was skipped`,
    );
    for (const s of got.skipped) t.ok(s.reason.length > 20, `${name}: ${s.value} is skipped with a reason (${s.reason})`);
  }
});

t.test("a skipped variable says which variable and what to do", async (t) => {
  const { skipped } = imageRefsFromText(COMPOSE);
  t.match(skipped[0]?.reason, /\$\{TAG:-latest\}.*expand it first/);
});

t.test("how a plain list is told from YAML", async (t) => {
  // One token a line is a list; a line ending with ":" or with a space inside is YAML.
  t.same(imageRefsFromText("alpine\nbusybox:1.36\n").refs, ["alpine", "busybox:1.36"], "single tokens: a list");
  t.same(imageRefsFromText("images:\n  - alpine\n").refs, [], "a mapping key alone on a line: YAML (and no image: key)");
  t.same(imageRefsFromText("image: alpine\n").refs, ["alpine"], "key: value is YAML");
  t.same(imageRefsFromText("- image: alpine\n- image: busybox\n").refs, ["alpine", "busybox"], "a YAML sequence");
});

t.test("text that is neither a list nor YAML names where it breaks", async (t) => {
  const cases: Array<[text: string, message: RegExp]> = [
    ["containers:\n  - image: a\n   bad: indentation\n", /not valid YAML or JSON: .*line 3, column 1$/],
    ["a: 1\n---\nimage: [unclosed\n", /\(document 2\): .*line 4/],
    ['image: "unclosed\n', /closing "?quote/i],
    ["\tfoo: bar\n", /tabs/i],
  ];
  for (const [text, message] of cases) {
    let caught: unknown = null;
    try {
      imageRefsFromText(text);
    } catch (err) {
      caught = err;
    }
    t.ok(caught instanceof ImageListError, `${JSON.stringify(text)}: refused`);
    t.match((caught as Error | null)?.message, message, `${JSON.stringify(text)}: says where`);
  }
});

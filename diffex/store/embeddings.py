"""Store rows of the embed stage: embedders, vectors, validity judgements. Mixed into Store (core.py)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DiffexError


class EmbeddingRows:
    # ------------------------------------------------------------------ embeddings (see diffex/embedding/stage.py)
    def add_embedder(self, embedder) -> None:
        self.con.execute(
            "INSERT OR IGNORE INTO embedders (embedder_id, name, spec, dim, metric) VALUES (?, ?, ?, ?, ?)",
            [embedder.embedder_id, embedder.name, embedder.spec, int(embedder.dim), embedder.metric],
        )

    def embedders(self) -> list[dict]:
        """Registered embedders, the most recently registered first, with their vector counts."""
        return self._rows(
            """SELECT m.embedder_id, m.name, m.spec, m.dim, m.metric, m.created_at,
                      (SELECT count(*) FROM embeddings x WHERE x.embedder_id = m.embedder_id) AS n_vectors
               FROM embedders m ORDER BY m.created_at DESC, m.embedder_id"""
        )

    def find_embedder(self, which: str | None = None) -> dict | None:
        """The embedder `which` names (id, 6-char id prefix, name or spec), the newest when None;
        None when it names none (it may be a SPEC to load)."""
        return self._named(self.embedders(), "embedders", "embedder_id", which)

    def resolve_embedder(self, which: str | None = None) -> dict:
        """The embedder named by id, id prefix, name or spec; else the most recently registered."""
        return self._resolve(self.embedders(), "embedders", "embedder_id", which,
                             f"{self.path} has no embeddings (index it with `diffex index --embedder SPEC`)",
                             lambda rows: f"embedder {which!r} has no vectors in {self.path}; "
                                          f"known: {', '.join(r['spec'] or r['name'] for r in rows)}")

    def embedded_items(self, embedder_id: str, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        rows = self.con.execute(
            "SELECT item_id FROM embeddings WHERE embedder_id = ? AND item_id IN (SELECT unnest(?))",
            [embedder_id, list(item_ids)],
        ).fetchall()
        return {r[0] for r in rows}

    def add_embeddings(self, embedder_id: str, item_ids: Sequence[str], item_kinds: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors (float32 [N, dim]) in one statement; the dimension must be the embedder's."""
        if not len(item_ids):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        row = self.con.execute("SELECT dim FROM embedders WHERE embedder_id = ?", [embedder_id]).fetchone()
        if row is None or vectors.ndim != 2 or vectors.shape != (len(item_ids), row[0]):
            raise DiffexError(f"vectors of shape {vectors.shape} do not fit embedder {embedder_id[:12]} "
                              f"(dimension {row[0] if row else 'unregistered'})")
        n, d = vectors.shape
        # a registered dict of numpy columns is scanned in bulk (a list of lists is ~30x slower)
        flat = {"row": np.repeat(np.arange(n, dtype=np.int64), d), "pos": np.tile(np.arange(d, dtype=np.int32), n),
                "val": vectors.reshape(-1)}
        meta = {"row": np.arange(n, dtype=np.int64), "item_id": np.array(list(item_ids), dtype=object),
                "item_kind": np.array(list(item_kinds), dtype=object)}
        cur = self.con.cursor()  # register() refuses a connection with a pending result
        cur.register("_diffex_vec_flat", flat)
        cur.register("_diffex_vec_meta", meta)
        try:
            cur.execute("BEGIN TRANSACTION")
            cur.execute("DELETE FROM embeddings WHERE embedder_id = ? AND item_id IN (SELECT item_id FROM _diffex_vec_meta)",
                        [embedder_id])
            cur.execute(
                """INSERT INTO embeddings (embedder_id, item_id, item_kind, vector)
                   SELECT ?, m.item_id, m.item_kind, v.vector
                   FROM (SELECT row, list(val ORDER BY pos) AS vector FROM _diffex_vec_flat GROUP BY row) v
                   JOIN _diffex_vec_meta m USING (row)""",
                [embedder_id],
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()

    def copy_embeddings(self, embedder_id: str, pairs: Sequence[tuple[str, str]], item_kind: str) -> None:
        """For each (source item, target item), store the source's vector again under the target
        id (a node's vector is the vector of its prompt text)."""
        if not pairs:
            return
        with self.transaction():
            self.con.execute(
                """CREATE OR REPLACE TEMP TABLE _copied AS
                   SELECT e.embedder_id, p.target AS item_id, ? AS item_kind, e.vector
                   FROM (SELECT unnest(?) AS source, unnest(?) AS target) p
                   JOIN embeddings e ON e.embedder_id = ? AND e.item_id = p.source""",
                [item_kind, [p[0] for p in pairs], [p[1] for p in pairs], embedder_id],
            )
            self.con.execute("DELETE FROM embeddings WHERE embedder_id = ? AND item_id IN (SELECT item_id FROM _copied)",
                             [embedder_id])
            self.con.execute("INSERT INTO embeddings SELECT * FROM _copied")
            self.con.execute("DROP TABLE _copied")

    def embeddings(
        self, embedder_id: str, kinds: Sequence[str] | None = None, item_ids: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
    ) -> tuple[list[str], list[str], np.ndarray]:
        """(item ids, kinds, float32 [N, dim]) ordered by item id."""
        sql = "SELECT item_id, item_kind, vector FROM embeddings WHERE embedder_id = ?"
        params: list[Any] = [embedder_id]
        if kinds is not None:
            sql += " AND item_kind IN (SELECT unnest(?))"
            params.append(list(kinds))
        if item_ids is not None:
            sql += " AND item_id IN (SELECT unnest(?))"
            params.append(list(item_ids))
        if exclude_ids:
            sql += " AND item_id NOT IN (SELECT unnest(?))"
            params.append(list(exclude_ids))
        cols = self.con.execute(sql + " ORDER BY item_id", params).fetchnumpy()
        ids = [str(i) for i in cols["item_id"]]
        dim = self.con.execute("SELECT dim FROM embedders WHERE embedder_id = ?", [embedder_id]).fetchone()
        matrix = (np.stack([np.asarray(v, dtype=np.float32) for v in cols["vector"]]) if ids
                  else np.zeros((0, dim[0] if dim else 0), np.float32))
        return ids, [str(k) for k in cols["item_kind"]], matrix

    def embedding_fingerprint(self, embedder_id: str, kinds: Sequence[str], item_ids: Sequence[str] | None = None) -> tuple[int, str]:
        """(count, checksum over ids AND vectors) of stored vectors: what a derived vector index
        must match to be trusted."""
        sql = """SELECT count(*), coalesce(sum(hash(item_id, vector)), 0)::VARCHAR FROM embeddings
                 WHERE embedder_id = ? AND item_kind IN (SELECT unnest(?))"""
        params: list[Any] = [embedder_id, list(kinds)]
        if item_ids is not None:
            sql += " AND item_id IN (SELECT unnest(?))"
            params.append(list(item_ids))
        n, checksum = self.con.execute(sql, params).fetchone()
        return int(n), str(checksum)

    def validity_rows(self, embedder_id: str, edit_ids: Sequence[str]) -> dict[str, dict]:
        if not edit_ids:
            return {}
        rows = self._rows(
            "SELECT * FROM edit_validity WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
            [embedder_id, list(edit_ids)],
        )
        return {r["edit_id"]: r for r in rows}

    def add_validity(self, embedder_id: str, rows: Sequence[tuple[str, float, float, float, bool]]) -> None:
        """rows: (edit_id, direction_sim, baseline_sim, threshold, valid)."""
        if not rows:
            return
        cols = list(zip(*rows))
        with self.transaction():
            self.con.execute("DELETE FROM edit_validity WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
                             [embedder_id, list(cols[0])])
            self.con.execute(
                """INSERT INTO edit_validity (edit_id, embedder_id, direction_sim, baseline_sim, threshold, valid)
                   SELECT unnest(?), ?, unnest(?), unnest(?), unnest(?), unnest(?)""",
                [list(cols[0]), embedder_id, [float(x) for x in cols[1]], [float(x) for x in cols[2]],
                 [float(x) for x in cols[3]], [bool(x) for x in cols[4]]],
            )
            images = self.con.execute("SELECT DISTINCT image_key FROM edits WHERE edit_id IN (SELECT unnest(?))",
                                      [list(cols[0])]).fetchall()
            self.refresh_effects(r[0] for r in images)

    # ---- side effects (issue 13; diffex/embedding/side_effects.py computes them)
    def side_checked(self, embedder_id: str, edit_ids: Sequence[str]) -> dict[str, str | None]:
        """{edit id: side_fp} of the edits among `edit_ids` this embedder judged (None: not checked)."""
        if not edit_ids:
            return {}
        rows = self.con.execute("SELECT edit_id, side_fp FROM edit_validity WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
                                [embedder_id, list(edit_ids)]).fetchall()
        return dict(rows)

    def add_side_effects(self, embedder_id: str, side_fp: str, edit_ids: Sequence[str],
                         rows: Sequence[tuple[str, str, float, float]],
                         verdicts: Sequence[tuple[str, float, bool]] = ()) -> None:
        """Replace the side effects of `edit_ids` (which must have validity rows of this embedder)
        by `rows` (edit_id, node_id, direction_sim, threshold), mark them checked against side_fp,
        and set `verdicts` (edit_id, direction_sim, valid): validity judged again once the side
        effects are known (diffex/embedding/side_effects.py)."""
        if not edit_ids:
            return
        with self.transaction():
            keys = self._keys("edits", "edit_id", "edit_key", list(edit_ids))
            nodes = self._keys("nodes", "node_id", "node_key", sorted({r[1] for r in rows}))
            self.con.execute("DELETE FROM edit_side_effects WHERE embedder_id = ? AND edit_key IN (SELECT unnest(?))",
                             [embedder_id, list(keys.values())])
            if rows:
                self.con.execute("INSERT INTO edit_side_effects SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?)",
                                 [embedder_id, [keys[r[0]] for r in rows], [nodes[r[1]] for r in rows],
                                  [float(r[2]) for r in rows], [float(r[3]) for r in rows]])
            self.con.execute("UPDATE edit_validity SET side_fp = ? WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
                             [side_fp, embedder_id, list(edit_ids)])
            if verdicts:
                self.con.execute(
                    """UPDATE edit_validity SET direction_sim = v.sim, valid = v.ok
                       FROM (SELECT unnest(?) AS edit_id, unnest(?) AS sim, unnest(?) AS ok) v
                       WHERE edit_validity.embedder_id = ? AND edit_validity.edit_id = v.edit_id""",
                    [[v[0] for v in verdicts], [float(v[1]) for v in verdicts], [bool(v[2]) for v in verdicts], embedder_id])
            self.refresh_effects(self._image_keys_of_items(list(keys.values())))

    def images_with_side_effects(self) -> list[int]:
        """Keys of the images whose edits showed a side effect (their side_corr can be nonzero)."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT e.image_key FROM edit_side_effects s JOIN edits e ON e.edit_key = s.edit_key").fetchall()]

    def edit_node_paths(self, edit_ids: Sequence[str]) -> dict[str, list[tuple[str, ...]]]:
        """{edit id: paths (label tuples) of the nodes it was made for}."""
        if not edit_ids:
            return {}
        rows = self.con.execute("SELECT en.edit_id, list(n.path) FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id "
                                "WHERE en.edit_id IN (SELECT unnest(?)) GROUP BY en.edit_id", [list(edit_ids)]).fetchall()
        return {r[0]: [tuple(p.split(" > ")) for p in r[1]] for r in rows}
    # ---- end side effects

    def edit_concepts(self, edit_ids: Sequence[str]) -> dict[str, list[str]]:
        """{edit id: prompts of the nodes it was made for and of all their descendants}: a group
        edit ("beard") shows one of its subtypes, so any of them is evidence that it worked."""
        if not edit_ids:
            return {}
        rows = self.con.execute(
            """WITH RECURSIVE d(edit_id, node_id, prompt) AS (
                   SELECT en.edit_id, n.node_id, n.prompt FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id
                   WHERE en.edit_id IN (SELECT unnest(?))
                   UNION
                   SELECT d.edit_id, c.node_id, c.prompt FROM d JOIN nodes c ON c.parent_id = d.node_id
               )
               SELECT edit_id, list(DISTINCT prompt ORDER BY prompt) FROM d GROUP BY edit_id""",
            [list(edit_ids)],
        ).fetchall()
        return {r[0]: list(r[1]) for r in rows}

    def single_edits(self, edit_ids: Sequence[str]) -> list[dict]:
        """Single edits among `edit_ids` with their image's null-edit baseline (for validity)."""
        if not edit_ids:
            return []
        return self._rows(
            """SELECT e.edit_id, e.image_id, e.prompts[1] AS prompt, e.direction, e.cache_path,
                      b.edit_id AS baseline_id
               FROM edits e
               JOIN edits b ON b.image_id = e.image_id AND b.editor_id = e.editor_id
                           AND b.kind = 'baseline' AND b.status = 'ok'
               WHERE e.kind = 'single' AND e.status = 'ok' AND e.edit_id IN (SELECT unnest(?))
               ORDER BY e.edit_id""",
            [list(edit_ids)],
        )

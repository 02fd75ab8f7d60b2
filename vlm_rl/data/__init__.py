"""Detection datasets: the row schema and its validation (schema), importers (coco, yolo), the synthetic
traffic-sign set (synthetic), and resizing to the model's input grid with boxes rescaled (resize,
preprocess). Boxes are always ``[x1, y1, x2, y2]`` in pixels of the image they belong to."""
